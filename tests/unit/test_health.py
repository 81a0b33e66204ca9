"""Health checks and self-healing: the pure rules, then the monitor on the fake host
(iSCSI and FC), the read probe and the metrics.

Every repair a test does not script fails it: the FakeExecutor refuses commands it
was not told about and the fake multipathd refuses unknown commands.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from hostagent.agent.metrics import Metrics, report_preflight
from hostagent.agent.service import AttachRequest, Service
from hostagent.agent.state import Store
from hostagent.connection_info import FIBRE_CHANNEL, ISCSI, parse
from hostagent.errors import DaemonUnavailable
from hostagent.health import (
    NO_SESSION,
    Action,
    AttachmentObservation,
    HealthMonitor,
    HealthOptions,
    HealthReport,
    MapObservation,
    PathObservation,
    Prober,
    ProbeResult,
    Verdict,
    evaluate,
    plan_heal,
    report_to_dict,
)
from hostagent.host.fs import HostFS
from hostagent.models import Status
from tests.unit import fchost
from tests.unit.bench_scale import build_host
from tests.unit.fakehost import FakeKernel, drop_from_map
from tests.unit.iscsihost import IQN, P1, P2, WWID, Agent, info

# ---- the pure rules ----------------------------------------------------------------------


def up(label: str, sd: str, **kw: object) -> PathObservation:
    base = PathObservation(label, IQN, f"3:0:{sd[-1]}:0", sd, session_state="LOGGED_IN",
                           connection_state="up", sd_state="running", wwid=WWID,
                           size_bytes=1 << 26, in_map=True, dm_state="active", checker="ready")
    return replace(base, **kw)  # type: ignore[arg-type]


def obs(*paths: PathObservation, **kw: object) -> AttachmentObservation:
    base = AttachmentObservation("a1", "vol-1", ISCSI, "/dev/dm-0", WWID, paths,
                                 MapObservation(True, "dm-0", "1 queue_if_no_path", 1 << 26))
    return replace(base, **kw)  # type: ignore[arg-type]


def test_every_path_up_is_healthy() -> None:
    h = evaluate(obs(up(P1, "sda"), up(P2, "sdb"), probe=ProbeResult(True, 0.01)))
    assert h.verdict == Verdict.HEALTHY and h.reasons == ()
    assert [p.state for p in h.paths] == ["up", "up"]


@pytest.mark.parametrize(("change", "problem"), [
    ({"session_state": "FAILED"}, "session in recovery: I/O on this path waits"),
    ({"session_state": "FAILED", "sd_state": "transport-offline"},
     "session in recovery past its replacement_timeout"),
    ({"session_state": "FREE"}, "session FREE"),
    ({"connection_state": "failed"}, "connection failed"),
    ({"rport_state": "Blocked"}, "remote port Blocked"),
    ({"sd_state": "blocked"}, "disk sdb blocked"),
    ({"sd_state": "transport-offline"}, "disk sdb transport-offline"),
    ({"wwid": WWID[:-1] + "0"}, "reports WWID"),
    ({"in_map": False}, "not in the map"),
    ({"dm_state": "failed", "checker": "faulty"}, "multipathd: failed/faulty"),
    ({"checker": "shaky"}, "multipathd: active/shaky"),
    ({"device": None, "missing_reason": "no disk at 4:0:0:0"}, "no disk at 4:0:0:0"),
    ({"hctl": None, "device": None, "missing_reason": NO_SESSION}, NO_SESSION),
])
def test_each_path_problem_degrades_and_is_named(change: dict[str, object],
                                                 problem: str) -> None:
    h = evaluate(obs(up(P1, "sda"), up(P2, "sdb", **change)))
    assert h.verdict == Verdict.DEGRADED
    assert h.reasons[0] == "1 of 2 paths up"
    assert any(r.startswith(f"{P2}: ") and problem in r for r in h.reasons), h.reasons


def test_no_path_up_is_failed_and_says_io_is_queued() -> None:
    h = evaluate(obs(up(P1, "sda", session_state="FAILED"), up(P2, "sdb", sd_state="blocked")))
    assert h.verdict == Verdict.FAILED
    assert h.reasons[0] == "no working path"
    assert "I/O is queued (queue_if_no_path)" in h.reasons


def test_a_gone_map_is_failed() -> None:
    h = evaluate(obs(up(P1, "sda", in_map=False), up(P2, "sdb", in_map=False),
                     map=MapObservation(True, None)))
    assert h.verdict == Verdict.FAILED and h.reasons[0] == f"multipath map {WWID} is gone"


def test_sizes_that_differ_degrade() -> None:
    h = evaluate(obs(up(P1, "sda", size_bytes=2 << 26), up(P2, "sdb")))
    assert h.verdict == Verdict.DEGRADED
    assert h.reasons == (f"sizes differ: dm-0 {1 << 26}, sda {2 << 26}, sdb {1 << 26}",)


def test_a_failed_probe_fails_and_a_slow_one_degrades() -> None:
    paths = (up(P1, "sda"), up(P2, "sdb"))
    failed = evaluate(obs(*paths, probe=ProbeResult(False, 0.1, False, "/dev/dm-0: I/O error")))
    assert failed.verdict == Verdict.FAILED
    assert failed.reasons == ("read probe: /dev/dm-0: I/O error",)
    slow = evaluate(obs(*paths, probe=ProbeResult(False, 10, True, "no answer within 10 s")))
    assert slow.verdict == Verdict.DEGRADED


def test_multipathd_not_answering_degrades() -> None:
    h = evaluate(obs(up(P1, "sda"), up(P2, "sdb"),
                     map=MapObservation(True, "dm-0", None, 1 << 26, "daemon down")))
    assert h.verdict == Verdict.DEGRADED and h.reasons == ("multipathd: daemon down",)


def test_single_path_mode_needs_no_map() -> None:
    h = evaluate(obs(up(P1, "sda", in_map=None, dm_state=None, checker=None),
                     map=MapObservation(False)))
    assert h.verdict == Verdict.HEALTHY


@pytest.mark.parametrize(("path", "action"), [
    (up(P2, "sdb", hctl=None, device=None, missing_reason=NO_SESSION), Action.LOGIN),
    (up(P2, "sdb", device=None, missing_reason="no disk at 3:0:b:0"), Action.SCAN),
    (up(P2, "sdb", sd_state="offline", in_map=False), Action.REPLACE),
    (up(P2, "sdb", in_map=False), Action.READD),
    # Never touched: a session in recovery (iscsid's), an offline disk a map holds,
    # a disk of another volume, a disk with a failed session.
    (up(P2, "sdb", session_state="FAILED"), None),
    (up(P2, "sdb", sd_state="offline", holders=("dm-0",)), None),
    (up(P2, "sdb", in_map=False, wwid=WWID[:-1] + "0"), None),
    (up(P2, "sdb", device=None, session_state="FAILED"), None),
])
def test_plan_heal(path: PathObservation, action: Action | None) -> None:
    planned = plan_heal(evaluate(obs(up(P1, "sda"), path)))
    assert [a.action for a in planned] == ([action] if action else [])


def test_no_repair_when_the_map_is_gone() -> None:
    gone = obs(up(P1, "sda"), up(P2, "sdb", hctl=None, device=None, missing_reason=NO_SESSION),
               map=MapObservation(True, None))
    assert plan_heal(evaluate(gone)) == []


# ---- the monitor on the fake iSCSI host ---------------------------------------------------

@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    a = Agent(tmp_path)
    a.host.kernel.luns[(IQN, 0)] = WWID
    return a


def monitor(agent: Agent, **options: object) -> HealthMonitor:
    opts = HealthOptions(**{"probe": False, **options})  # type: ignore[arg-type]
    return HealthMonitor(agent.service, agent.host.fs, agent.host.mpd, options=opts,
                         metrics=Metrics(), clock=agent.host.clock)


def attach(agent: Agent) -> None:
    agent.expect_attach()
    agent.attach("a1", info())
    agent.host.executor.assert_done()


def disk_at(kernel: FakeKernel, hctl: str) -> str:
    return os.listdir(kernel.p(f"/sys/class/scsi_device/{hctl}/device/block"))[0]


def set_sd_state(kernel: FakeKernel, hctl: str, state: str) -> None:
    kernel.p(f"/sys/class/scsi_device/{hctl}/device/state").write_text(state)


def log_out_behind_our_back(agent: Agent, portal: str) -> None:
    kernel = agent.host.kernel
    host = kernel.session_host(IQN, portal)
    hctl = f"{host}:0:0:0"
    drop_from_map(kernel, disk_at(kernel, hctl))
    kernel.delete_disk(hctl)
    kernel.remove_session(IQN, portal)


def check(m: HealthMonitor) -> HealthReport:
    return asyncio.run(m.check())


def last_action(m: HealthMonitor) -> dict[str, object]:
    return check(m).actions[-1]


def test_a_healthy_attachment(agent: Agent) -> None:
    attach(agent)
    report = check(monitor(agent))
    assert report.verdict == Verdict.HEALTHY
    (h,) = report.attachments
    assert h.obs.device == "/dev/dm-0" and h.obs.map.features == "1 queue_if_no_path"
    assert [(p.state, p.obs.session_state, p.obs.dm_state) for p in h.paths] == \
        [("up", "LOGGED_IN", "active")] * 2
    doc = report_to_dict(report)
    assert doc["status"] == "healthy" and doc["attachments"][0]["paths_up"] == 2
    assert doc["history"][0]["from"] == "new" and doc["history"][0]["to"] == "healthy"


def test_a_session_logged_out_behind_our_back_is_logged_in_again(agent: Agent) -> None:
    attach(agent)
    m = monitor(agent)
    log_out_behind_our_back(agent, P2)
    report = check(m)
    assert report.verdict == Verdict.DEGRADED
    assert f"{P2}: {NO_SESSION}" in report.attachments[0].reasons
    agent.host.expect_login(IQN, P2)  # and no logout, of this or any session
    asyncio.run(m.run_once())
    agent.host.executor.assert_done()
    assert check(m).verdict == Verdict.HEALTHY
    device = agent.store.get("a1").device  # type: ignore[union-attr]
    assert device is not None
    assert sorted(p.portal or "" for p in device.paths) == sorted([P1, P2])
    assert [(t.before, t.after) for t in check(m).history] == \
        [("new", "degraded"), ("degraded", "healthy")]
    assert m.metrics is not None
    assert 'hostagent_self_heal_actions_total{action="login",outcome="ok"} 1.0' in \
        m.metrics.render()[0].decode()
    # The healed path is the attachment's: a detach takes it away with the rest.
    agent.expect_release()
    asyncio.run(agent.service.detach("a1"))
    assert agent.host.kernel.disks_on(5) == [] and agent.host.kernel.dm_of(WWID) is None
    agent.host.executor.assert_done()


def test_with_self_healing_off_nothing_is_done(agent: Agent) -> None:
    attach(agent)
    m = monitor(agent, self_heal=False)
    log_out_behind_our_back(agent, P2)
    for _ in range(2):
        assert asyncio.run(m.run_once()).verdict == Verdict.DEGRADED
    assert agent.host.executor.calls[-1].argv[-1] == "--login"  # the attach's, none since
    assert len(agent.host.executor.calls) == 4


def test_repairs_are_rate_limited_per_path(agent: Agent) -> None:
    attach(agent)
    m = monitor(agent, heal_interval=60)
    log_out_behind_our_back(agent, P2)
    agent.host.expect_login(IQN, P2, returncode=8)  # the portal still times out
    asyncio.run(m.run_once())
    asyncio.run(m.run_once())  # too soon: an unscripted second login would fail the test
    agent.host.executor.assert_done()
    assert last_action(m)["outcome"] == "failed"
    agent.host.clock.advance(61)  # past heal_interval, and past the portal's rest
    agent.host.expect_login(IQN, P2)
    asyncio.run(m.run_once())
    agent.host.executor.assert_done()
    assert check(m).verdict == Verdict.HEALTHY


def test_a_portal_resting_after_a_failed_heal_is_skipped_not_logged_in(agent: Agent) -> None:
    attach(agent)
    m = monitor(agent, heal_interval=1)
    log_out_behind_our_back(agent, P2)
    agent.host.expect_login(IQN, P2, returncode=8)  # the portal times out
    asyncio.run(m.run_once())
    assert last_action(m)["outcome"] == "failed"
    agent.host.clock.advance(2)  # past heal_interval, within the portal's rest
    asyncio.run(m.run_once())  # an unscripted login would fail the test
    agent.host.executor.assert_done()
    assert last_action(m)["outcome"] == "skipped"
    assert "not tried again for 28 s" in str(last_action(m)["message"])


def test_a_missing_node_record_is_reported_not_made(agent: Agent) -> None:
    attach(agent)
    m = monitor(agent)
    log_out_behind_our_back(agent, P2)
    agent.host.record(IQN, P2).unlink()  # the secrets are not stored: it cannot be made anew
    asyncio.run(m.run_once())
    assert last_action(m)["outcome"] == "failed"
    assert "no node record" in last_action(m)["message"]


def test_a_path_missing_from_the_map_is_added_back(agent: Agent) -> None:
    attach(agent)
    m = monitor(agent)
    kernel = agent.host.kernel
    sd = disk_at(kernel, f"{kernel.session_host(IQN, P2)}:0:0:0")
    drop_from_map(kernel, sd)
    assert check(m).attachments[0].reasons[1] == f"{P2}: not in the map"
    asyncio.run(m.run_once())
    assert f"add path {sd}" in agent.host.mpd.commands
    assert check(m).verdict == Verdict.HEALTHY
    assert agent.host.executor.calls == agent.host.executor.calls[:4]  # no host process


def test_an_offline_disk_nobody_holds_is_replaced(agent: Agent) -> None:
    attach(agent)
    m = monitor(agent)
    kernel = agent.host.kernel
    hctl = f"{kernel.session_host(IQN, P2)}:0:0:0"
    old = disk_at(kernel, hctl)
    drop_from_map(kernel, old)
    set_sd_state(kernel, hctl, "offline")
    asyncio.run(m.run_once())
    new = disk_at(kernel, hctl)  # Linux hands the freed name out again: sdb, anew
    assert new == old and f"add path {new}" in agent.host.mpd.commands
    assert kernel.p(f"/sys/class/scsi_device/{hctl}/device/state").read_text() == "running"
    assert (f"/sys/class/scsi_device/{hctl}/device/delete", "1") in agent.host.fs.writes
    assert ("/sys/class/scsi_host/host4/scan", "0 0 0") in agent.host.fs.writes
    assert check(m).verdict == Verdict.HEALTHY
    device = agent.store.get("a1").device  # type: ignore[union-attr]
    assert device is not None and new in {p.device for p in device.paths}
    agent.expect_release()
    asyncio.run(agent.service.detach("a1"))
    assert kernel.disks_on(4) == []


def test_an_offline_disk_in_the_map_is_left_alone(agent: Agent) -> None:
    attach(agent)
    m = monitor(agent)
    hctl = f"{agent.host.kernel.session_host(IQN, P2)}:0:0:0"
    set_sd_state(agent.host.kernel, hctl, "offline")
    writes = len(agent.host.fs.writes)
    assert asyncio.run(m.run_once()).verdict == Verdict.DEGRADED
    assert len(agent.host.fs.writes) == writes


def test_a_round_reads_each_thing_once(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cost growth (issue 17): a round's reads are O(paths). Each session's connection
    state once, each disk's attributes once, no disk listing per path, no holders of
    running disks, no map's uuid per attachment."""
    paths = build_host(agent, k2_luns=6, datera=2)  # 2 K2 sessions, 4 Datera sessions
    m = monitor(agent)
    check(m)  # rows parsed and cached: the second round is the steady state
    seen: Counter[str] = Counter()
    for name in ("read", "listdir", "readlink"):  # try_read reads through read
        real = getattr(agent.host.fs, name)

        def counted(path: str, real: object = real) -> object:
            seen[path] += 1
            return real(path)  # type: ignore[operator]
        monkeypatch.setattr(agent.host.fs, name, counted)
    report = check(m)
    assert report.verdict == Verdict.HEALTHY and sum(len(h.paths) for h in report.attachments) \
        == paths == 16
    assert max(seen.values()) == 1, [p for p, n in seen.items() if n > 1]
    kinds = Counter(p.rsplit("/", 1)[-1] if "/slaves" not in p else "slaves" for p in seen)
    assert kinds["state"] == 2 * 6 + paths  # each session and its connection, each disk
    assert kinds["wwid"] == kinds["size"] - 8 == paths  # and each map's size
    assert kinds["uuid"] == kinds["slaves"] == 8
    assert not [p for p in seen if p.endswith(("/holders", "/device/block"))]


def test_an_attachment_under_an_operation_is_not_repaired(agent: Agent) -> None:
    attach(agent)
    m = monitor(agent)
    log_out_behind_our_back(agent, P2)

    async def go() -> None:
        async with agent.service.attachment_lock("a1"):
            await m.run_once()

    asyncio.run(go())
    assert last_action(m)["outcome"] == "skipped"
    assert last_action(m)["message"] == "an operation is under way"
    assert len(agent.host.executor.calls) == 4
    assert m.metrics is not None  # nothing was tried, so no repair is counted
    assert "hostagent_self_heal_actions_total{" not in m.metrics.render()[0].decode()


class NoRepairs:
    """An engine that offers self-healing nothing, as the os-brick engine."""

    def __init__(self, engine: object) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> object:
        if name == "repair":
            raise AttributeError(name)
        return getattr(self._engine, name)


def test_an_engine_without_repairs_is_skipped_and_runs_nothing(
        agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    attach(agent)
    monkeypatch.setitem(agent.service.connectors, ISCSI,  # type: ignore[call-overload]
                        NoRepairs(agent.service.connectors[ISCSI]))
    m = monitor(agent)
    log_out_behind_our_back(agent, P2)
    asyncio.run(m.run_once())
    assert (last_action(m)["outcome"], last_action(m)["message"]) == \
        ("skipped", "this engine does not self-heal")
    assert len(agent.host.executor.calls) == 4  # the attach's, and no login


def test_transitions_are_logged_once(agent: Agent, caplog: pytest.LogCaptureFixture) -> None:
    attach(agent)
    m = monitor(agent, self_heal=False)
    check(m)
    log_out_behind_our_back(agent, P2)
    check(m)
    check(m)
    assert [r.getMessage() for r in caplog.records if r.name == "hostagent.health"] == \
        [f"health a1: healthy -> degraded (1 of 2 paths up; {P2}: {NO_SESSION})"]


# ---- Fibre Channel ------------------------------------------------------------------------

def fc_info() -> dict[str, object]:
    itmap = {fchost.I1: [fchost.T1, fchost.T2], fchost.I2: [fchost.T1, fchost.T2]}
    return {"driver_volume_type": "fibre_channel",
            "data": {"target_wwn": [fchost.T1, fchost.T2], "target_lun": 1,
                     "initiator_target_map": itmap}}


@pytest.fixture
def fc_agent(tmp_path: Path) -> tuple[fchost.Host, Service]:
    host = fchost.Host(tmp_path / "host")
    host.hba(fchost.I1, fchost.T1, fchost.T2)
    host.hba(fchost.I2, fchost.T1, fchost.T2)
    host.export(1)
    service = Service(Store(tmp_path / "state"), {FIBRE_CHANNEL: host.connector})
    spec = parse(fc_info())
    asyncio.run(service.attach(AttachRequest("f1", fc_info(), spec, None, True, 60)))
    return host, service


def fc_monitor(host: fchost.Host, service: Service) -> HealthMonitor:
    return HealthMonitor(service, host.fs, host.mpd, options=HealthOptions(probe=False))


def test_fc_four_paths_healthy_then_a_link_down_degrades(
        fc_agent: tuple[fchost.Host, Service]) -> None:
    host, service = fc_agent
    m = fc_monitor(host, service)
    report = check(m)
    assert report.verdict == Verdict.HEALTHY and len(report.attachments[0].paths) == 4
    assert {s for _, _, s in report.attachments[0].obs.remote_ports} == {"Online"}
    kernel = host.kernel
    kernel.set_fc_host_state(4, "Linkdown")
    for rport in kernel.rports():
        if rport.startswith("rport-4:"):
            kernel.set_rport(rport, "port_state", "Blocked")
    report = asyncio.run(m.run_once())  # nothing to repair: the FakeExecutor stays unused
    (h,) = report.attachments
    assert h.verdict == Verdict.DEGRADED
    assert f"{fchost.I2} (host4): port Linkdown" in h.reasons
    assert ("rport-4:0-0", fchost.T1, "Blocked") in h.obs.remote_ports
    assert host.executor.calls == []


def test_fc_a_lost_disk_behind_an_online_port_is_scanned_again(
        fc_agent: tuple[fchost.Host, Service]) -> None:
    host, service = fc_agent
    m = fc_monitor(host, service)
    kernel = host.kernel
    drop_from_map(kernel, disk_at(kernel, "3:0:1:1"))
    kernel.delete_disk("3:0:1:1")
    assert check(m).attachments[0].reasons[1].endswith("no disk at 3:0:1:1")
    asyncio.run(m.run_once())
    assert ("/sys/class/scsi_host/host3/scan", "0 1 1") in host.fs.writes
    assert check(m).verdict == Verdict.HEALTHY
    assert host.executor.calls == []


# ---- the read probe -----------------------------------------------------------------------

class ProbeFS(HostFS):
    def __init__(self) -> None:
        super().__init__("/nonexistent")
        self.release = threading.Event()
        self.mode = "ok"

    def read_direct(self, dev_path: str, size: int = 4096) -> int:
        if self.mode == "error":
            raise OSError(errno.EIO, "Input/output error")
        if self.mode == "stuck":
            self.release.wait(10)
        return size


def test_probe_ok_error_and_a_stuck_read_probed_once() -> None:
    fs = ProbeFS()
    prober = Prober(fs, timeout=0.05)
    assert asyncio.run(prober.probe("/dev/dm-0")).ok
    fs.mode = "error"
    failed = asyncio.run(prober.probe("/dev/dm-0"))
    assert not failed.ok and not failed.timed_out and failed.error == \
        "/dev/dm-0: Input/output error"
    fs.mode = "stuck"
    try:
        slow = asyncio.run(prober.probe("/dev/dm-0"))
        assert slow.timed_out and slow.error == "no answer within 0.05 s"
        again = asyncio.run(prober.probe("/dev/dm-0"))  # no second thread on a stuck device
        assert again.timed_out and "has not returned" in (again.error or "")
    finally:
        fs.release.set()


class StuckOn(HostFS):
    """Reads of `stuck` hang until released; the others answer at once."""

    def __init__(self, stuck: str) -> None:
        super().__init__("/nonexistent")
        self.stuck = stuck
        self.release = threading.Event()
        self.threads: set[int] = set()

    def read_direct(self, dev_path: str, size: int = 4096) -> int:
        self.threads.add(threading.get_ident())
        if dev_path == self.stuck:
            self.release.wait(10)
        return size


def test_probe_threads_serve_the_next_rounds_but_never_behind_a_stuck_read() -> None:
    fs = StuckOn("/dev/dm-9")
    prober = Prober(fs, timeout=0.05)
    devs = [f"/dev/dm-{i}" for i in range(4)]

    async def round_of(names: list[str]) -> list[ProbeResult]:
        return await prober.probe_all(names)
    for _ in range(5):
        assert all(r.ok for r in asyncio.run(round_of(devs)))
    assert 1 <= len(fs.threads) <= 4  # threads serve round after round (not 20 of them)
    try:
        stuck, *rest = asyncio.run(round_of(["/dev/dm-9", *devs]))
        assert stuck.timed_out and all(r.ok for r in rest)  # none waited for dm-9's
        again = asyncio.run(round_of(["/dev/dm-9", *devs]))
        assert again[0].timed_out and all(r.ok for r in again[1:])
    finally:
        fs.release.set()


def test_two_attachments_of_one_map_share_its_read() -> None:
    fs = StuckOn("/dev/none")
    reads: list[str] = []
    real = fs.read_direct

    def counted(dev_path: str, size: int = 4096) -> int:
        reads.append(dev_path)
        return real(dev_path, size)
    fs.read_direct = counted  # type: ignore[method-assign]
    results = asyncio.run(Prober(fs, timeout=1).probe_all(["/dev/dm-0", "/dev/dm-1",
                                                           "/dev/dm-0"]))
    assert [r.ok for r in results] == [True] * 3  # not "an earlier read has not returned"
    assert sorted(reads) == ["/dev/dm-0", "/dev/dm-1"]


def test_a_real_o_direct_read(tmp_path: Path) -> None:
    target = tmp_path / "disk"
    target.write_bytes(b"\0" * 8192)
    fs = HostFS(tmp_path)
    try:
        assert fs.read_direct("/disk") == 4096
    except OSError as err:  # tmpfs has no O_DIRECT
        assert err.errno == errno.EINVAL


# ---- metrics ------------------------------------------------------------------------------

def test_metrics_exposition(agent: Agent) -> None:
    metrics = Metrics(attachments=lambda: Counter(a.status.value for a in agent.store.list()),
                      commands=lambda: {("iscsiadm", "ok"): 4, ("iscsiadm", "failed"): 1},
                      socket_calls=lambda: 7)
    agent.service = Service(agent.store, {ISCSI: agent.host.connector},
                            observe=metrics.observe_operation)
    attach(agent)
    m = HealthMonitor(agent.service, agent.host.fs, agent.host.mpd, metrics=metrics,
                      options=HealthOptions(probe=False))
    check(m)
    report_preflight({"pass": 11, "warn": 1, "fail": 0})
    text = metrics.render()[0].decode()
    for line in ('hostagent_attachments{state="attached"} 1.0',
                 'hostagent_attachments{state="failed"} 0.0',
                 'hostagent_paths{state="up"} 2.0',
                 'hostagent_attachments_health{status="healthy"} 1.0',
                 'hostagent_operation_seconds_count{operation="attach",outcome="ok"} 1.0',
                 'hostagent_host_commands_total{command="iscsiadm",outcome="failed"} 1.0',
                 'hostagent_multipathd_socket_commands_total 7.0',
                 'hostagent_preflight_checks{status="warn"} 1.0',
                 'hostagent_health_checks_total 1.0'):
        assert line in text.splitlines(), line
    assert agent.store.get("a1").status == Status.ATTACHED  # type: ignore[union-attr]


def test_multipathd_not_answering_is_degraded_not_a_crash(agent: Agent) -> None:
    attach(agent)

    class Down(type(agent.host.mpd)):  # type: ignore[misc]
        async def command(self, cmd: str, *, timeout: float) -> str:
            raise DaemonUnavailable("multipathd is not running or refuses us: [Errno 111]")

    m = HealthMonitor(agent.service, agent.host.fs, Down(agent.host.kernel),
                      options=HealthOptions(probe=False))
    (h,) = check(m).attachments
    assert h.verdict == Verdict.DEGRADED
    assert h.reasons[-1].startswith("multipathd: daemon_unavailable: multipathd is not running")
    assert [p.state for p in h.paths] == ["up", "up"]  # sysfs still shows the map's disks


def test_single_path_attachment_expects_its_one_path(agent: Agent) -> None:
    agent.host.expect_new_node(IQN, P1)
    agent.host.expect_login(IQN, P1)
    req = agent.request("s1", info())
    asyncio.run(agent.service.attach(replace(req, multipath=False)))
    (h,) = check(monitor(agent)).attachments
    assert h.verdict == Verdict.HEALTHY and [p.obs.label for p in h.paths] == [P1]
    assert h.obs.device.startswith("/dev/sd") and not h.obs.map.expected


def test_detached_and_failed_attachments_are_not_checked(agent: Agent) -> None:
    attach(agent)
    agent.expect_release()
    asyncio.run(agent.service.detach("a1"))
    report = check(monitor(agent))
    assert report.verdict == Verdict.HEALTHY and report.attachments == ()


def test_fc_a_link_down_on_separate_fabrics_is_one_lost_path(tmp_path: Path) -> None:
    # As in the guest: each HBA sees only its own target, every HBA mapped to every target.
    host = fchost.Host(tmp_path / "host")
    h1 = host.hba(fchost.I1, fchost.T1)
    host.hba(fchost.I2, fchost.T2)
    host.export(1)
    service = Service(Store(tmp_path / "state"), {FIBRE_CHANNEL: host.connector})
    asyncio.run(service.attach(AttachRequest("f1", fc_info(), parse(fc_info()), None, True, 60)))
    m = fc_monitor(host, service)
    assert [p.state for p in check(m).attachments[0].paths] == ["up", "up"]
    host.kernel.set_fc_host_state(h1, "Linkdown")
    (h,) = check(m).attachments
    assert [p.state for p in h.paths] == ["up", "missing"]
    assert h.reasons == ("1 of 2 paths up", f"{fchost.I1} (host{h1}): port Linkdown",
                         f"{fchost.T1}: seen by no online HBA")
