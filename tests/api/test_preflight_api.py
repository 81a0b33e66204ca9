"""GET /v1/preflight over the real app, on a prepared fake node."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostagent.api import openapi
from tests.api.test_api import assert_error, one
from tests.unit.iscsihost import Agent


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    return Agent(tmp_path)


def test_preflight_answers_the_checks_with_the_worst_status(agent: Agent) -> None:
    agent.node.expect_checks()
    agent.node.add_portal("10.0.0.2")
    agent.node.net.refused.add("10.0.0.2")
    status, doc = one(agent, "GET", "/v1/preflight?portal=10.0.0.2:3260&fc=false")
    assert status == 200 and doc["status"] == "fail"
    checks = {c["id"]: c for c in doc["checks"]}
    assert checks["portal.10.0.0.2:3260.connect"]["status"] == "fail"
    assert checks["portal.10.0.0.2:3260.connect"]["remedy"]
    assert checks["binary.iscsiadm"] == {"id": "binary.iscsiadm", "status": "pass",
                                         "detail": "/usr/sbin/iscsiadm", "remedy": "",
                                         "packages": {}}
    assert "fc.hbas" not in checks
    agent.node.executor.assert_done()
    schema = openapi.SPEC["components"]["schemas"]["Preflight"]
    assert set(doc) == set(schema["properties"])
    assert set(doc["checks"][0]) == set(schema["properties"]["checks"]["items"]["properties"])


@pytest.mark.parametrize(("query", "field"), [
    ("portal=10.0.0.2%3Breboot", "query.portal[0]"),
    ("portal=10.0.0.2&portal=..%2F..%2Fetc", "query.portal[1]"),
    ("portal=" + "&portal=".join(f"10.0.0.{i}" for i in range(17)), "query.portal"),
    ("fc=maybe", "query.fc"),
    ("verbose=1", "query.verbose"),
])
def test_bad_preflight_queries_are_refused_before_any_check(agent: Agent, query: str,
                                                            field: str) -> None:
    assert_error(one(agent, "GET", f"/v1/preflight?{query}"), 400, "invalid_request", field)
    assert agent.node.executor.calls == [] and agent.node.net.connects == []
