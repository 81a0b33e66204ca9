"""GET /v1/health, GET /metrics and `hostagent-cli health` over the service on the fake host."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hostagent.agent.metrics import Metrics
from hostagent.api.app import make_app
from hostagent.cli import main as cli
from hostagent.exitcodes import HealthExit
from hostagent.health import HealthMonitor, HealthOptions
from tests.api.test_cli import Server
from tests.unit.iscsihost import IQN, P1, P2, WWID, Agent, info
from tests.unit.test_health import log_out_behind_our_back


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    a = Agent(tmp_path)
    a.host.kernel.luns[(IQN, 0)] = WWID
    a.expect_attach()
    a.attach("a1", info())
    return a


def parts(agent: Agent) -> tuple[HealthMonitor, Metrics]:
    metrics = Metrics()
    return HealthMonitor(agent.service, agent.host.fs, agent.host.mpd, metrics=metrics,
                         options=HealthOptions(probe=False, self_heal=False)), metrics


def get(agent: Agent, *paths: str, enabled: bool = True) -> list[tuple[int, str, Any]]:
    async def go() -> list[tuple[int, str, Any]]:
        monitor, metrics = parts(agent) if enabled else (None, None)
        app = make_app(agent.service, peer_check=None, preflight=agent.node.preflight,
                       health=monitor, metrics=metrics)
        async with TestClient(TestServer(app)) as client:
            answers = []
            for path in paths:
                resp = await client.get(path)
                text = await resp.text()
                answers.append((resp.status, resp.headers["Content-Type"], text))
            return answers
    return asyncio.run(go())


def test_health_answers_every_attachment(agent: Agent) -> None:
    log_out_behind_our_back(agent, P2)
    ((status, ctype, text),) = get(agent, "/v1/health")
    assert status == 200 and ctype.startswith("application/json")
    doc = json.loads(text)
    assert doc["status"] == "degraded" and doc["self_heal"] == {"enabled": False, "actions": []}
    (att,) = doc["attachments"]
    assert (att["id"], att["device"], att["wwn"]) == ("a1", "/dev/dm-0", WWID)
    assert (att["paths_up"], att["paths_expected"]) == (1, 2)
    by_path = {p["path"]: p for p in att["paths"]}
    assert by_path[P1]["state"] == "up" and by_path[P1]["multipath_state"] == "active/ready"
    assert by_path[P2]["state"] == "missing" and by_path[P2]["problems"] == ["no session"]
    assert att["map"] == {"expected": True, "device": "dm-0", "features": "1 queue_if_no_path",
                          "size_bytes": 64 << 20}
    assert att["history"][0]["to"] == "degraded"


def test_metrics_are_prometheus_text(agent: Agent) -> None:
    (_, (status, ctype, text)) = get(agent, "/v1/health", "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=")
    assert 'hostagent_paths{state="up"} 2.0' in text.splitlines()


def test_unknown_query_and_disabled_parts(agent: Agent) -> None:
    ((bad, _, text),) = get(agent, "/v1/health?verbose=1")
    assert bad == 400 and json.loads(text)["error"]["details"]["field"] == "query.verbose"
    off = get(agent, "/v1/health", "/metrics", enabled=False)
    assert [s for s, _, _ in off] == [404, 404]


class HealthServer(Server):
    def __init__(self, agent: Agent, directory: Path) -> None:
        super().__init__(agent, directory, None)
        monitor, metrics = parts(agent)
        self.app = make_app(agent.service, peer_check=None, preflight=agent.node.preflight,
                            health=monitor, metrics=metrics)
        self.runner = web.AppRunner(self.app)


@pytest.fixture
def server(agent: Agent, sockdir: Path) -> Iterator[HealthServer]:
    with HealthServer(agent, sockdir) as s:
        yield s


@pytest.fixture
def sockdir(tmp_path: Path) -> Path:
    return tmp_path


def test_cli_health_exit_statuses_and_table(agent: Agent, server: HealthServer,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--socket", server.socket, "health"]) == HealthExit.HEALTHY
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "overall: healthy (1 attached volume(s); self-heal off)"
    assert out[1].split() == ["ID", "STATUS", "DEVICE", "PATHS", "PROBE", "VOLUME"]
    assert out[2].split() == ["a1", "healthy", "/dev/dm-0", "2/2", "-", "vol-1"]
    log_out_behind_our_back(agent, P2)
    assert cli.main(["--socket", server.socket, "health"]) == HealthExit.DEGRADED
    out = capsys.readouterr().out
    assert f"  path {P2}: missing (no session)" in out.splitlines()
    assert "  reason: 1 of 2 paths up" in out.splitlines()
    log_out_behind_our_back(agent, P1)
    assert cli.main(["--socket", server.socket, "health", "--json"]) == HealthExit.FAILED
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "failed" and doc["attachments"][0]["reasons"][0] == \
        "no working path"
