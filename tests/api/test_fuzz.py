"""Schemathesis against GET /v1/openapi.json, on a live app served over TCP by a
thread of its own, with the real service on the fake host.

Every operation the document describes is fuzzed (examples, coverage and
fuzzing phases, positive and negative data): no answer is a 5xx, every status
is one the document lists for the operation, every answer has the documented
content type and schema, negative data is refused, and every 4xx is exactly
{"error": {"code", "message", "details"}}. The fake executor fails loudly on a
command nobody scripted, so a fuzzed request that reached the host would show
up as a 500.

Each operation is a test of its own. MAX_EXAMPLES bounds its fuzzing phase (the
coverage phase adds its own deterministic cases, among them every method the
path does not have); the fixture's teardown checks the operation ran examples,
records how many as the junit property `schemathesis_examples` and prints the
count by status and by phase/mode (seen with -s).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from hostagent.agent.metrics import Metrics
from hostagent.api import openapi
from hostagent.api.app import attach_request, make_app
from hostagent.connection_info import MAX_PORTAL_LEN, parse_portal
from hostagent.errors import InvalidRequest
from hostagent.health import HealthMonitor, HealthOptions
from tests.unit.iscsihost import IQN, WWID, Agent

MAX_EXAMPLES = 100  # fuzzing-phase examples per operation; the suite stays well under 60 s
PREFLIGHT_RUNS = 10_000  # how often the fake node answers a preflight's two commands
TOTAL: Counter[str] = Counter()  # examples per operation, this session


class TcpServer:
    """The app on 127.0.0.1 (an ephemeral port), served by its own loop in a thread:
    schemathesis calls it with requests from the test's thread."""

    def __init__(self, app: web.Application) -> None:
        self.runner = web.AppRunner(app)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def __enter__(self) -> TcpServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Live:
    """What a fuzzing run needs: the agent on the fake host, the server, the counts."""

    def __init__(self, agent: Agent, server: TcpServer) -> None:
        self.agent, self.server = agent, server
        self.examples: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.kinds: Counter[str] = Counter()  # phase/mode: coverage/negative, fuzzing/positive ...


def fake_agent(tmp_path: Path) -> Agent:
    agent = Agent(tmp_path)
    agent.host.kernel.luns[(IQN, 0)] = WWID
    agent.host.kernel.write("/etc/iscsi/initiatorname.iscsi", "InitiatorName=iqn.2026-11.x:h\n")
    # A preflight is harmless whatever its (valid) query: its two commands answer,
    # unknown portals have no route and refuse nothing.
    agent.node.executor.expect(["iscsiadm", "-m", "session"], returncode=21, times=PREFLIGHT_RUNS)
    agent.node.executor.expect(["multipath", "-t"], stdout="", times=PREFLIGHT_RUNS)
    return agent


@pytest.fixture
def live(tmp_path: Path, record_property: Callable[[str, object], None]) -> Iterator[Live]:
    agent = fake_agent(tmp_path)
    metrics = Metrics()
    monitor = HealthMonitor(agent.service, agent.host.fs, agent.host.mpd, metrics=metrics,
                            options=HealthOptions(probe=False, self_heal=False))
    app = make_app(agent.service, peer_check=None, preflight=agent.node.preflight,
                   health=monitor, metrics=metrics)
    with TcpServer(app) as server:
        with urllib.request.urlopen(f"{server.url}/v1/openapi.json", timeout=10) as resp:
            assert json.load(resp) == json.loads(json.dumps(openapi.SPEC)), \
                "the live app serves another document than the one fuzzed"
        state = Live(agent, server)
        yield state
    total = sum(state.examples.values())
    record_property("schemathesis_examples", total)
    TOTAL.update(state.examples)
    print(f"\nschemathesis: {dict(state.examples)} statuses "
          f"{dict(sorted(state.statuses.items()))} kinds {dict(sorted(state.kinds.items()))}; "
          f"{sum(TOTAL.values())} examples so far")
    assert total > 0 and len(state.examples) == 1, state.examples
    # Nothing a fuzzed request said reached the host's commands.
    assert agent.host.executor.calls == [] and agent.host.executor.unexpected == []
    assert agent.node.executor.unexpected == []
    assert agent.store.list() == []


# schemathesis' lazy loader (pytest.from_fixture) does not run under pytest 9
# (it sets Function._nodeid), so the document is loaded at collection and every
# test proves first that the live app serves exactly this document.
schema = schemathesis.openapi.from_dict(openapi.SPEC)

ERROR_KEYS = {"code", "message", "details"}
StCase = schemathesis.Case[schemathesis.APIOperation[Any, Any, Any, Any]]
# Schema-valid values these take are not all valid: the document cannot state what
# an IQN, a portal or a WWPN is (connection_info is an object; a portal a string),
# so a schema-valid one may still get 400 naming the field. Their bounds (lengths,
# counts, ranges) are checked like everything else's.
LOOSER_THAN_THE_SERVER = {("POST", "/v1/attachments"), ("GET", "/v1/preflight")}


def error_shape(response: schemathesis.Response) -> None:
    """Every 4xx and 5xx is exactly the documented error document."""
    if response.status_code < 400:
        return
    doc = json.loads(response.content)
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    error = doc["error"]
    assert isinstance(error, dict) and set(error) == ERROR_KEYS, doc
    assert isinstance(error["code"], str) and isinstance(error["message"], str), doc
    assert isinstance(error["details"], dict), doc
    if response.status_code == 400:
        assert error["code"] == "invalid_request", doc
        assert isinstance(error["details"].get("field"), str), "a 400 names its field"


def documented(case: StCase, response: schemathesis.Response) -> None:
    """The status is one the document lists for this operation (no `default` anywhere);
    a method the path does not have (the coverage phase tries them) answers 405 with
    Allow naming the methods it has."""
    methods = openapi.SPEC["paths"][case.operation.path]
    if case.method.lower() not in methods:
        assert response.status_code == 405, response.text[:300]
        allowed = {m.strip() for m in response.headers.get("allow", [""])[0].split(",")}
        assert allowed == {m.upper() for m in methods if m != "parameters"}, response.headers
        return
    operation = methods[case.method.lower()]
    assert str(response.status_code) in operation["responses"], (
        f"{case.method} {case.operation.path} answered an undocumented "
        f"{response.status_code}: {response.text[:300]}")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_api_answers_what_its_openapi_document_says(case: StCase, live: Live) -> None:
    live.examples[f"{case.operation.method.upper()} {case.operation.path}"] += 1
    response = case.call(base_url=live.server.url, timeout=30)
    live.statuses[response.status_code] += 1
    if case.meta is not None:
        live.kinds[f"{case.meta.phase.name.value}/{case.meta.generation.mode.value}"] += 1
    assert response.status_code < 500, response.text[:500]
    documented(case, response)
    error_shape(response)
    loose = (case.operation.method.upper(), case.operation.path) in LOOSER_THAN_THE_SERVER
    case.validate_response(response,
                           excluded_checks=[positive_data_acceptance] if loose else None)


# ---- what the fuzzing found, kept as regression tests ------------------------------------

def test_a_405_says_which_methods_the_path_has(tmp_path: Path) -> None:
    """RFC 9110: a 405 carries Allow. The error middleware used to drop aiohttp's."""
    agent = fake_agent(tmp_path)
    app = make_app(agent.service, peer_check=None, preflight=agent.node.preflight)
    with TcpServer(app) as server:
        for path, methods in (("/v1/attachments", {"GET", "POST"}),
                              ("/v1/attachments/a1", {"GET", "DELETE"}),
                              ("/v1/attachments/a1/extend", {"POST"})):
            request = urllib.request.Request(f"{server.url}{path}", method="PUT")
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(request, timeout=10)
            assert err.value.code == 405
            assert {m.strip() for m in err.value.headers["Allow"].split(",")} == methods
            assert json.load(err.value)["error"]["code"] == "method_not_allowed"
    assert agent.host.executor.calls == []


def test_the_documented_bounds_are_the_servers(tmp_path: Path) -> None:
    """The document said a preflight portal could be 263 characters (the server takes
    261) and a volume_id 255 of anything (the server takes the id pattern)."""
    portal = openapi.SPEC["paths"]["/v1/preflight"]["get"]["parameters"][0]["schema"]["items"]
    volume_id = openapi.SPEC["components"]["schemas"]["AttachRequest"]["properties"][
        "volume_id"]
    assert portal["maxLength"] == MAX_PORTAL_LEN
    with pytest.raises(InvalidRequest, match="not an IP address or DNS name"):
        parse_portal("a" * MAX_PORTAL_LEN, "p")  # not refused for its length
    with pytest.raises(InvalidRequest, match="longer than"):
        parse_portal("a" * (MAX_PORTAL_LEN + 1), "p")
    pattern = re.compile(volume_id["pattern"])
    assert pattern.fullmatch("v" * 128) and not pattern.fullmatch("v" * 129)
    assert not pattern.fullmatch("vol\n1") and not pattern.fullmatch("")
    service = fake_agent(tmp_path).service
    with pytest.raises(InvalidRequest) as err:
        attach_request({"volume_id": "v" * 129, "connection_info": {}}, service)
    assert err.value.field == "volume_id"
    with pytest.raises(InvalidRequest) as err:  # 128 passes: the next field is refused
        attach_request({"volume_id": "v" * 128, "connection_info": {}}, service)
    assert err.value.field == "connection_info.data"


def test_the_longest_documented_query_is_answered_by_the_app(tmp_path: Path) -> None:
    """16 portals of 261 characters, percent-encoded UTF-8: ~50 kB of request line.
    aiohttp's default limit (8190) refused it with a plain-text 400 of its own."""
    agent = fake_agent(tmp_path)
    app = make_app(agent.service, peer_check=None, preflight=agent.node.preflight)
    portal = "\U0001d51e" * MAX_PORTAL_LEN  # 4 bytes of UTF-8, 12 once percent-encoded
    query = urllib.parse.urlencode([("portal", portal)] * openapi.MAX_PREFLIGHT_PORTALS)
    assert len(query) > 48_000
    with TcpServer(app) as server, pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{server.url}/v1/preflight?{query}", timeout=10)
    assert err.value.code == 400
    assert json.load(err.value)["error"]["details"] == {"field": "query.portal[0]"}
    assert agent.node.net.connects == []


def test_an_empty_or_repeated_flag_is_refused(tmp_path: Path) -> None:
    """`?fc=` was taken for false (the fuzzer's "schema-violating request accepted"),
    and so was a bare `?force`; `?force=false&force=true` took the first."""
    agent = fake_agent(tmp_path)
    app = make_app(agent.service, peer_check=None, preflight=agent.node.preflight)
    with TcpServer(app) as server:
        for method, path, field in (("GET", "/v1/preflight?fc=", "query.fc"),
                                    ("DELETE", "/v1/attachments/a1?force", "query.force"),
                                    ("DELETE", "/v1/attachments/a1?force=false&force=true",
                                     "query.force")):
            request = urllib.request.Request(f"{server.url}{path}", method=method)
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(request, timeout=10)
            assert err.value.code == 400
            assert json.load(err.value)["error"]["details"] == {"field": field}
    assert agent.node.executor.calls == [] and agent.host.executor.calls == []
