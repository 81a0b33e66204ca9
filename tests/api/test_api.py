"""The HTTP API through aiohttp's TestClient, over the real service on the fake host.

Every refused request is also checked to have run nothing on the host.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hostagent.api import openapi
from hostagent.api.app import ROUTES, make_app
from hostagent.connection_info import parse
from hostagent.errors import InvalidRequest
from tests.unit.iscsihost import IQN, P1, P2, SECRET, WWID, Agent, info

MAX_BODY = 4096


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    a = Agent(tmp_path)
    a.host.kernel.luns[(IQN, 0)] = WWID
    return a


def call(agent: Agent, *requests: tuple[str, str, dict[str, Any]]) -> list[tuple[int, Any]]:
    """Make the requests in order against a fresh app; the answers with their status."""
    async def go() -> list[tuple[int, Any]]:
        app = make_app(agent.service, peer_check=None, preflight=agent.node.preflight,
                       max_body_bytes=MAX_BODY)
        async with TestClient(TestServer(app)) as client:
            answers = []
            for method, path, kw in requests:
                resp = await client.request(method, path, **kw)
                answers.append((resp.status, await resp.json()))
            return answers
    return asyncio.run(go())


def one(agent: Agent, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    return call(agent, (method, path, kw))[0]


def body(att_id: str = "a1", **extra: Any) -> dict[str, Any]:
    return {"attachment_id": att_id, "connection_info": info(secret=SECRET), **extra}


def assert_error(answer: tuple[int, Any], status: int, code: str, field: str | None = None
                 ) -> None:
    got_status, doc = answer
    assert got_status == status, doc
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message", "details"}
    assert doc["error"]["code"] == code, doc
    if field is not None:
        assert doc["error"]["details"].get("field") == field, doc


def test_attach_then_retry_then_conflict(agent: Agent) -> None:
    agent.expect_attach()
    created, retried, conflict = call(
        agent, ("POST", "/v1/attachments", {"json": body()}),
        ("POST", "/v1/attachments", {"json": body()}),
        ("POST", "/v1/attachments", {"json": body(volume_id="other")}))
    assert created[0] == 201 and retried[0] == 200
    att = created[1]
    assert att["status"] == "attached" and att["device"]["path"] == "/dev/dm-0"
    assert att["device"]["wwn"] == WWID and len(att["device"]["paths"]) == 2
    assert att["connection_info"]["data"]["auth_password"] == "***"
    assert SECRET not in json.dumps(att)
    assert retried[1] == att
    assert_error(conflict, 409, "conflict")
    agent.host.executor.assert_done()


def test_the_attachments_apis_flat_connection_info_is_attached(agent: Agent) -> None:
    wrapped = info(secret=SECRET)
    ci = {"driver_volume_type": "iscsi", "attachment_id": "cinder-att-1",
          "enforce_multipath": False, **wrapped["data"]}
    agent.expect_attach()
    status, att = one(agent, "POST", "/v1/attachments", json=body(connection_info=ci))
    assert status == 201, att
    assert att["connection_info"]["auth_password"] == "***" and SECRET not in json.dumps(att)
    agent.host.executor.assert_done()


def test_get_list_detach_and_a_retried_detach(agent: Agent) -> None:
    agent.expect_attach()
    agent.expect_release()
    answers = call(
        agent, ("POST", "/v1/attachments", {"json": body()}),
        ("GET", "/v1/attachments/a1", {}), ("GET", "/v1/attachments", {}),
        ("DELETE", "/v1/attachments/a1", {}), ("DELETE", "/v1/attachments/a1", {}),
        ("GET", "/v1/attachments", {}))
    (_, att), (s_get, got), (s_list, listed), (s_del, gone), (s_again, again), (_, after) = \
        answers
    assert s_get == 200 and got == att
    assert s_list == 200 and listed == {"attachments": [att]}
    assert s_del == 200 and gone["status"] == "detached" and gone["phase"] is None
    assert s_again == 200 and again == gone
    assert after == {"attachments": []}
    agent.host.executor.assert_done()


def test_extend_and_connector(agent: Agent) -> None:
    agent.expect_attach()
    agent.host.kernel.write("/etc/iscsi/initiatorname.iscsi", "InitiatorName=iqn.2026-11.x:h\n")
    (_, _), (s_ext, ext), (s_conn, props) = call(
        agent, ("POST", "/v1/attachments", {"json": body()}),
        ("POST", "/v1/attachments/a1/extend", {}), ("GET", "/v1/connector", {}))
    assert s_ext == 200 and ext["device"]["size_bytes"] == 64 << 20
    assert s_conn == 200 and props["initiator"] == "iqn.2026-11.x:h"
    assert props["multipath"] is True and {"host", "ip", "platform", "os_type"} <= set(props)


def test_unknown_ids_and_routes_answer_404_in_the_error_shape(agent: Agent) -> None:
    assert_error(one(agent, "GET", "/v1/attachments/nope"), 404, "not_found")
    assert_error(one(agent, "DELETE", "/v1/attachments/nope"), 404, "not_found")
    assert_error(one(agent, "POST", "/v1/attachments/nope/extend"), 404, "not_found")
    assert_error(one(agent, "GET", "/v2/whatever"), 404, "not_found")
    assert_error(one(agent, "PUT", "/v1/attachments"), 405, "method_not_allowed")


# ---- hostile input: 400 naming the field, nothing on the host ---------------------------

def _deep(depth: int) -> str:
    return '{"connection_info": ' + "[" * depth + "]" * depth + "}"


HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("unknown field", {"json": {**body(), "extra": 1}}, "extra"),
    ("no connection_info", {"json": {"attachment_id": "a1"}}, "connection_info"),
    ("options not an object", {"json": body(options=[1])}, "options"),
    ("unknown option", {"json": body(options={"fast": True})}, "options.fast"),
    ("multipath not a bool", {"json": body(options={"multipath": "yes"})},
     "options.multipath"),
    ("timeout a bool", {"json": body(options={"timeout": True})}, "options.timeout"),
    ("timeout out of range", {"json": body(options={"timeout": 1e9})}, "options.timeout"),
    ("id with a path", {"json": body("../../etc/passwd")}, "attachment_id"),
    ("id with a newline", {"json": body("a\nb")}, "attachment_id"),
    ("id too long", {"json": body("a" * 129)}, "attachment_id"),
    ("volume id with a NUL", {"json": body(volume_id="v\x00")}, "volume_id"),
    ("shell in an IQN", {"json": {"connection_info": info(iqn="iqn.2010-01.com.x:$(reboot)")}},
     "connection_info.data.target_iqns[0]"),
    ("portal with a space", {"json": {"connection_info": {
        "target_portal": "1.2.3.4:3260 -o delete", "target_iqn": IQN, "target_lun": 0}}},
     "connection_info.data.target_portal"),
    ("LUN out of range", {"json": {"connection_info": info(lun=70000)}},
     "connection_info.data.target_luns[0]"),
    ("connection_info not an object", {"json": {"connection_info": "iscsi"}},
     "connection_info"),
    ("duplicate keys", {"data": '{"connection_info": {}, "connection_info": {}}'}, "body"),
    ("not JSON", {"data": "attach please"}, "body"),
    ("a JSON array", {"json": [body()]}, "body"),
    ("nested too deep", {"data": _deep(40)}, "body"),
    ("nested far too deep", {"data": _deep(MAX_BODY // 2 - 20)}, "body"),
    ("oversized", {"json": {**body(), "volume_id": "v" * MAX_BODY}}, "body"),
]


@pytest.mark.parametrize(("kw", "field"), [(kw, f) for _, kw, f in HOSTILE],
                         ids=[name for name, _, _ in HOSTILE])
def test_hostile_attach_requests_are_refused_naming_the_field(
        agent: Agent, kw: dict[str, Any], field: str) -> None:
    assert_error(one(agent, "POST", "/v1/attachments", **kw), 400, "invalid_request", field)
    assert agent.host.executor.calls == []
    assert agent.store.list() == []


def test_a_refused_connection_info_keeps_the_parsers_own_words(agent: Agent) -> None:
    ci = info(secret=SECRET)
    ci["data"]["target_portal"] = "[fe80::1]: 3260"  # the parser's reason quotes ": "
    with pytest.raises(InvalidRequest) as parsed:
        parse(ci)
    status, doc = one(agent, "POST", "/v1/attachments", json=body(connection_info=ci))
    assert status == 400, doc
    field = f"connection_info.{parsed.value.field}"
    assert doc["error"]["details"]["field"] == field
    assert doc["error"]["message"] == f"{field}: {parsed.value.reason}"
    assert agent.host.executor.calls == []


@pytest.mark.parametrize(("method", "path", "field"), [
    ("DELETE", "/v1/attachments/a1?force=maybe", "query.force"),
    ("DELETE", "/v1/attachments/a1?purge=1", "query.purge"),
    ("GET", "/v1/attachments?all=1", "query.all"),
    ("GET", "/v1/attachments/a%0Ab", "attachment_id"),
])
def test_bad_queries_and_ids_are_refused(agent: Agent, method: str, path: str,
                                         field: str) -> None:
    assert_error(one(agent, method, path), 400, "invalid_request", field)
    assert agent.host.executor.calls == []


def test_forced_detach_is_accepted(agent: Agent) -> None:
    agent.expect_attach()
    agent.expect_release()
    (_, _), (status, gone) = call(agent, ("POST", "/v1/attachments", {"json": body()}),
                                  ("DELETE", "/v1/attachments/a1?force=true", {}))
    assert status == 200 and gone["status"] == "detached"


# ---- the OpenAPI document matches the server -------------------------------------------

def test_openapi_describes_exactly_the_served_routes(agent: Agent) -> None:
    status, spec = one(agent, "GET", "/v1/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    described = {(m.upper(), path) for path, ops in spec["paths"].items()
                 for m in ops if m != "parameters"}
    served = {(method, path) for method, path, _ in ROUTES}
    assert described == served
    schema = spec["components"]["schemas"]["AttachRequest"]
    assert tuple(schema["properties"]) == openapi.ATTACH_FIELDS
    assert tuple(schema["properties"]["options"]["properties"]) == openapi.OPTION_FIELDS


def test_every_answer_status_is_documented(agent: Agent) -> None:
    agent.expect_attach()
    answers = call(agent, ("POST", "/v1/attachments", {"json": body()}),
                   ("POST", "/v1/attachments", {"json": body()}),
                   ("POST", "/v1/attachments", {"json": {"x": 1}}),
                   ("GET", "/v1/attachments/nope", {}))
    paths = openapi.SPEC["paths"]
    for (status, _), op in zip(answers, [paths["/v1/attachments"]["post"]] * 3
                               + [paths["/v1/attachments/{attachment_id}"]["get"]],
                               strict=True):
        assert str(status) in op["responses"], (status, op["operationId"])


def test_portals_in_the_answer_are_the_requested_ones(agent: Agent) -> None:
    agent.expect_attach()
    _, att = one(agent, "POST", "/v1/attachments", json=body())
    assert sorted(p["portal"] for p in att["device"]["paths"]) == sorted([P1, P2])
