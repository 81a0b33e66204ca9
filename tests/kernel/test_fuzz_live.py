"""Schemathesis against GET /v1/openapi.json on `hostagent serve` in the guest: the
kernel tier of issue 9 (tests/api/test_fuzz.py is the unit tier, on the fake host).

The agent listens on a Unix socket; schemathesis speaks HTTP to a base URL, so a
forwarder (127.0.0.1, an ephemeral port, its own loop in a thread) carries each
TCP connection to the socket. The checks are the unit tier's (imported from it):
no 500, every status one the document lists for the operation, the documented
content type and schema, negative data refused, every 4xx (and 5xx) exactly
{"error": {"code", "message", "details"}}. A 502 or 504 is a host failure: allowed
only where the document lists it, in the error shape.

Every operation of hostagent.api.openapi.SPEC is fuzzed as it is. The document calls
connection_info an object, so no generated attach gets past the parser to the
host; a second test fuzzes POST /v1/attachments with connection_info narrowed to
iSCSI data whose portals and IQNs are made up (unroutable: the guest has no
default route; a closed loopback port; an unresolvable name) or the real LIO
array's (a made-up IQN there is refused at login; the real one attaches, once:
a second attach of the volume is a 409; a LUN it does not have times out).
Those reach iscsiadm, so the agent gets short login, command and device timeouts
and the test few examples (SendTargets on an unreachable portal costs ~17 s:
iscsiadm's reopen_max retries, twice).

After each test the host is clean: whatever attachment the fuzzing left (a
failed attach, or one that succeeded against the real array) is detached through
the API, then no session, node record, disk, map or store row is left.
Examples per test go to the junit property `schemathesis_examples`; the counts by
status to $HOSTAGENT_RESULTS/fuzz-live.json and the output (seen with -s or -rP).
"""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from hostagent.agent.state import Store
from hostagent.api import openapi
from hostagent.cli.client import ClientError
from tests.api.test_fuzz import LOOSER_THAN_THE_SERVER, StCase, documented, error_shape
from tests.kernel import rawtools as raw
from tests.kernel.test_daemon import RUN_DIR, Daemon, cli_attach, record
from tests.kernel.testbed import leaks, probe
from tests.kernel.testbed.faults import Faults
from tests.kernel.testbed.guest import Guest
from tests.kernel.testbed.lio import IscsiArray
from tests.kernel.testbed.sh import run, wait_until

MAX_EXAMPLES = 10  # fuzzing-phase examples per operation of the document (a TCG guest is slow)
PREFLIGHT_EXAMPLES = 6  # each runs the node's checks: real commands
HOST_ATTACH_EXAMPLES = 6  # each reaches iscsiadm (fuzzing phase only)
HOST_FAILURES = {502, 504}  # documented where they may occur: a host command failed/timed out
IFACE = "hostagent"
# Short enough that a made-up portal fails fast, long enough for a real attach in TCG.
AGENT_OPTIONS = {"iscsi": {"iface": IFACE, "login_timeout": "2", "login_attempts": "1"},
                 "timeouts": {"device": "10", "attach": "60", "command": "15",
                              "detach": "120"},
                 "health": {"interval": "3600", "self_heal": "false"}}
MADE_UP_PORTALS = ("192.0.2.1:3260", "198.51.100.7:3261", "127.0.0.1:3261",
                   "array.invalid:3260")
MADE_UP_IQN = "iqn.2026-11.org.example:nowhere"


class UnixForwarder:
    """127.0.0.1:<ephemeral> -> the agent's Unix socket, byte for byte, one Unix
    connection per TCP connection; its own loop in a thread."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    def __enter__(self) -> UnixForwarder:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            ureader, uwriter = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            writer.close()
            self.tasks.discard(task)
            return
        try:
            await asyncio.gather(self._pipe(reader, uwriter), self._pipe(ureader, writer))
        finally:
            for w in (writer, uwriter):
                w.close()
            self.tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.close()

    async def _stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Agent:
    """The agent in the guest, reached over HTTP through the forwarder."""

    def __init__(self, daemon: Daemon, forwarder: UnixForwarder) -> None:
        self.daemon, self.forwarder = daemon, forwarder


class Counts:
    def __init__(self) -> None:
        self.examples: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.by_operation: dict[str, Counter[int]] = {}
        self.kinds: Counter[str] = Counter()
        self.cleaned: list[str] = []  # attachments the fuzzing left, detached after it


FIGURES = Counts()  # the module's, for fuzz-live.json


@pytest.fixture(scope="module")
def agent(guest: Guest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    RUN_DIR.mkdir(exist_ok=True)
    started = time.monotonic()
    daemon = Daemon(tmp_path_factory.mktemp("fuzz-agent"), options=AGENT_OPTIONS)
    daemon.start()
    start_s = time.monotonic() - started
    try:
        with UnixForwarder(daemon.socket) as forwarder:
            with urllib.request.urlopen(f"{forwarder.url}/v1/openapi.json", timeout=60) as r:
                assert json.load(r) == json.loads(json.dumps(openapi.SPEC)), \
                    "the live agent serves another document than the one fuzzed"
            yield Agent(daemon, forwarder)
    finally:
        daemon.stop()
        store = Store(daemon.state_dir)
        try:
            left = store.list()
        finally:
            store.close()
    total = sum(FIGURES.examples.values())
    record("fuzz-live", {
        "schemathesis_examples": total,
        "agent_start_s": round(start_s, 1),
        "fuzz_s": round(time.monotonic() - started - start_s, 1),
        "statuses": {str(k): v for k, v in sorted(FIGURES.statuses.items())},
        "by_operation": {op: {str(k): v for k, v in sorted(c.items())}
                         for op, c in sorted(FIGURES.by_operation.items())},
        "examples": dict(sorted(FIGURES.examples.items())),
        "kinds": dict(sorted(FIGURES.kinds.items())),
        "left_by_fuzzing_and_detached": FIGURES.cleaned,
    })
    assert left == [], f"the agent's store kept {[a.id for a in left]}"


def hostagent_node_records() -> list[str]:
    return sorted(str(p) for p in Path("/etc/iscsi/nodes").glob(f"*/*/{IFACE}"))


def hostagent_sessions() -> list[str]:
    out = run(["iscsiadm", "-m", "session", "-P", "1"], ok=(0, 21)).stdout
    return [line for line in out.splitlines() if f"Iface Name: {IFACE}" in line]


def clean_up_after(agent: Agent, counts: Counts, baseline: leaks.Snapshot) -> None:
    """Detach what the fuzzing left (a failed attach is kept as `failed`; one the real
    array accepted as `attached`), then the host and the store must be empty."""
    api = agent.daemon.api
    left: list[dict[str, Any]] = api("GET", "/v1/attachments")["attachments"]
    live = [a for a in left if a["status"] == "attached"]
    # A failed attach undid what it did: only an attached volume owns host objects.
    wwns = {a["device"]["wwn"] for a in live}
    iqns = {str(a["connection_info"].get("data", a["connection_info"]).get("target_iqn"))
            for a in live}
    assert set(probe.maps()) <= wwns, f"maps of no attachment: {sorted(probe.maps())}"
    # ... and a failed attach of another LUN behind the same target kept them.
    assert wwns <= set(probe.maps()), f"attached without a map: {sorted(wwns)}"
    assert all(r.split("/")[-3] in iqns for r in hostagent_node_records()), \
        f"node records of no attachment: {hostagent_node_records()}"
    for att in left:
        try:
            gone = api("DELETE", f"/v1/attachments/{att['id']}")
        except ClientError:
            gone = api("DELETE", f"/v1/attachments/{att['id']}?force=true")
        assert gone["status"] == "detached", gone
        counts.cleaned.append(f"{att['id']} ({att['status']})")
    assert api("GET", "/v1/attachments")["attachments"] == []
    assert hostagent_sessions() == [], hostagent_sessions()
    assert hostagent_node_records() == [], hostagent_node_records()
    assert not probe.maps(), probe.maps()
    # The initiator side (the array's LIO objects and loop devices go with `array`;
    # the autouse leak check looks at everything after that).
    left_here = [line for line in leaks.find(baseline)
                 if not line.startswith(("lio objects", "loop devices"))]
    assert left_here == [], left_here


@pytest.fixture
def counts(agent: Agent, baseline: leaks.Snapshot,
           record_property: Callable[[str, object], None]) -> Iterator[Counts]:
    state = Counts()
    yield state
    clean_up_after(agent, state, baseline)
    total = sum(state.examples.values())
    record_property("schemathesis_examples", total)
    FIGURES.examples.update(state.examples)
    FIGURES.statuses.update(state.statuses)
    FIGURES.kinds.update(state.kinds)
    FIGURES.cleaned += state.cleaned
    for op, c in state.by_operation.items():
        FIGURES.by_operation.setdefault(op, Counter()).update(c)
    print(f"\nschemathesis (live): {dict(state.examples)} statuses "
          f"{dict(sorted(state.statuses.items()))} kinds {dict(sorted(state.kinds.items()))}"
          f"; left and detached: {state.cleaned}; "
          f"{sum(FIGURES.examples.values())} examples so far")
    assert total > 0, state.examples


def call_and_check(case: StCase, agent: Agent, counts: Counts) -> None:
    op = f"{case.operation.method.upper()} {case.operation.path}"
    counts.examples[op] += 1
    response = case.call(base_url=agent.forwarder.url, timeout=180)
    status = response.status_code
    counts.statuses[status] += 1
    counts.by_operation.setdefault(op, Counter())[status] += 1
    if case.meta is not None:
        counts.kinds[f"{case.meta.phase.name.value}/{case.meta.generation.mode.value}"] += 1
    assert status < 500 or status in HOST_FAILURES, f"{op}: {status} {response.text[:500]}"
    documented(case, response)  # a 502/504 only where the document lists it
    error_shape(response)  # every 4xx and 5xx: exactly {"error": {code, message, details}}
    excluded: list[Any] = []
    if (case.operation.method.upper(), case.operation.path) in LOOSER_THAN_THE_SERVER:
        excluded.append(positive_data_acceptance)
    if status in HOST_FAILURES:  # documented and in the error shape: the host said no
        excluded += [not_a_server_error, positive_data_acceptance]
    case.validate_response(response, excluded_checks=excluded or None)


# The document as served; the slow operation (preflight runs the node's commands)
# gets fewer examples.
SCHEMA = schemathesis.openapi.from_dict(openapi.SPEC)
FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,  # the repo is read-only
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])


@SCHEMA.exclude(method="GET", path="/v1/preflight").parametrize()
@FUZZ
def test_the_live_agent_answers_what_its_document_says(case: StCase, agent: Agent,
                                                        counts: Counts) -> None:
    call_and_check(case, agent, counts)


@SCHEMA.include(method="GET", path="/v1/preflight").parametrize()
@settings(FUZZ, max_examples=PREFLIGHT_EXAMPLES)
def test_the_live_preflight_answers_what_its_document_says(case: StCase, agent: Agent,
                                                           counts: Counts) -> None:
    call_and_check(case, agent, counts)


# ---- attaches that reach the host ----------------------------------------------------

# Filled in by the test before schemathesis draws: the real array's portal and IQN.
REAL: dict[str, str] = {"portal": "127.0.0.1:3260", "iqn": "iqn.2026-11.invalid:unset"}


def narrowed_spec() -> dict[str, Any]:
    """The document with connection_info as a Cinder iSCSI connection_info whose
    portals and IQNs are made up or the real array's: positive examples pass the
    parser and reach iscsiadm."""
    spec = copy.deepcopy(openapi.SPEC)

    data = {"type": "object", "additionalProperties": False,
            "required": ["target_portal", "target_iqn", "target_lun"],
            "properties": {
                "target_portal": {"type": "string",
                                  "enum": [REAL["portal"], *MADE_UP_PORTALS]},
                "target_iqn": {"type": "string", "enum": [MADE_UP_IQN, REAL["iqn"]]},
                "target_lun": {"type": "integer", "minimum": 0, "maximum": 1},
                "target_discovered": {"type": "boolean"}}}
    spec["components"]["schemas"]["AttachRequest"]["properties"]["connection_info"] = {
        "type": "object", "additionalProperties": False,
        "required": ["driver_volume_type", "data"],
        "properties": {"driver_volume_type": {"type": "string", "enum": ["iscsi"]},
                       "data": data}}
    return spec


@pytest.fixture
def real_export(array: IscsiArray) -> Iterator[None]:
    export = array.export_datera(multipath=False)
    REAL.update(portal=array.portals[0], iqn=export.iqn)
    yield
    REAL.update(iqn="iqn.2026-11.invalid:unset")


def test_attaches_that_reach_the_host_answer_what_the_document_says(
        real_export: None, agent: Agent, counts: Counts) -> None:
    """The enums are read when the schema is loaded, after the array exported its
    volume: the schema is built here and its test run inline."""
    schema = schemathesis.openapi.from_dict(narrowed_spec()).include(
        method="POST", path="/v1/attachments")
    schema.config.phases.update(phases=["fuzzing"])
    operation = schema["/v1/attachments"]["POST"]

    @given(case=operation.as_strategy())
    @settings(FUZZ, max_examples=HOST_ATTACH_EXAMPLES)
    def run(case: StCase) -> None:
        call_and_check(case, agent, counts)

    run()


# A consumer with dirty pages on a map: buffered writes, not synced, the fd kept open.
DIRTY = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, os.urandom(4 << 20), 0)
print("dirty", flush=True)
sys.stdin.readline()
"""


def test_a_flush_that_cannot_finish_leaves_the_api_answering(
        agent: Agent, array: IscsiArray, faults: Faults, tmp_path: Path) -> None:
    """Every path blocked under a queueing map with dirty pages: BLKFLSBUF cannot finish.
    It runs off the event loop: the API answers meanwhile, and the plain detach is
    refused by its deadline ([timeouts] device, 10 s here) with nothing torn down."""
    daemon = agent.daemon
    export = array.export_datera()
    att = cli_attach(daemon, tmp_path, export, "stuck-flush")
    assert "queue_if_no_path" in run(["dmsetup", "table", export.wwid]).stdout
    writer = subprocess.Popen([sys.executable, "-c", DIRTY, att["device"]["stable_path"]],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "dirty"
        for portal in array.portals:
            faults.block_portal(portal)
        refused: list[ClientError] = []

        def detach() -> None:
            try:
                daemon.api("DELETE", "/v1/attachments/stuck-flush")
            except ClientError as err:
                refused.append(err)

        worker = threading.Thread(target=detach)
        worker.start()
        answered = []
        while worker.is_alive():
            start = time.monotonic()
            daemon.api("GET", "/v1/attachments")
            answered.append(time.monotonic() - start)
            time.sleep(0.5)
        worker.join()
        assert [e.code for e in refused] == ["device_busy"], refused
        assert "flushing" in refused[0].message and "10 s" in refused[0].message, refused
        assert len(answered) >= 10 and max(answered) < 5, answered
        after = daemon.api("GET", "/v1/attachments/stuck-flush")
        assert after["status"] == "attached", after
        assert export.wwid in probe.maps()  # nothing was torn down
    finally:
        faults.restore()
        writer.kill()
        writer.wait(60)
    # The paths back, the stuck flush ends and lets go of the map: the detach goes through.
    def detached() -> bool | None:
        try:
            return daemon.api("DELETE", "/v1/attachments/stuck-flush")["status"] == "detached"
        except ClientError as err:
            assert err.code == "device_busy", err.to_dict()
            return None
    wait_until(detached, timeout=120, interval=5, what="the detach once the paths are back")
    assert not raw.disks_with_wwid(export.wwid) and export.wwid not in probe.maps()
