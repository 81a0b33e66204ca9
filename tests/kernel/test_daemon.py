"""The agent on the real kernel: `hostagent serve` in the guest, driven by
hostagent-cli and the HTTP API; crashes at every step of an attach and a detach."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from hostagent.agent.crashhook import CRASH_FILE_ENV
from hostagent.cli.client import Client, ClientError
from hostagent.exitcodes import ExitCode
from tests.kernel import pystarts
from tests.kernel import rawtools as raw
from tests.kernel.engine import check_data
from tests.kernel.test_iscsi_connector import assert_nothing_of
from tests.kernel.testbed import probe
from tests.kernel.testbed.guest import Guest
from tests.kernel.testbed.lio import Chap, Export, IscsiArray
from tests.kernel.testbed.sh import wait_until
from tests.unprivileged import NOBODY, cli_as_nobody

RUN_DIR = Path("/run/hostagent-test")


class Daemon:
    """`hostagent serve` as a child process with its own config and state, and the
    crash hook's file (crashhook.CRASH_FILE_ENV) to stop it at a chosen phase."""

    def __init__(self, root: Path, options: dict[str, dict[str, str]] | None = None) -> None:
        """`options`: config options by section, over the ones written here."""
        self.socket = str(RUN_DIR / "hostagent.sock")
        self.config = root / "hostagent.conf"
        self.state_dir = root / "state"
        sections: dict[str, dict[str, str]] = {
            "DEFAULT": {"socket": self.socket, "state_dir": str(self.state_dir),
                        "lock_path": str(root / "locks"), "log_level": "DEBUG",
                        "socket_group": "0"},
            # An emulated guest: udev takes far longer per disk than a real host
            # when twenty attaches land at once.
            "timeouts": {"device": "180", "attach": "900"}}
        for section, values in (options or {}).items():
            sections.setdefault(section, {}).update(values)
        self.config.write_text("".join(
            f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
            for section, values in sections.items()))
        self.crash_file = root / "crash-at"
        self.crash_file.write_text("")
        self.log = Path(os.environ.get("HOSTAGENT_RESULTS", "/tmp")) / "daemon-test.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        started = time.monotonic()
        with self.log.open("ab") as log:
            log.write(f"\n==== start at {time.strftime('%H:%M:%S')}\n".encode())
            self.proc = subprocess.Popen(
                [*pystarts.AGENT, "serve", "--config", str(self.config)],
                stdout=log, stderr=log, env={**os.environ, CRASH_FILE_ENV: str(self.crash_file)})
        try:  # Python starts slowly in an emulated guest
            wait_until(self._answers, timeout=240, what="the agent's socket")
        except BaseException:
            self.stop()
            raise
        pystarts.record("agent", time.monotonic() - started)

    def _answers(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "the agent died at start"
        try:
            self.api("GET", "/v1/attachments")
        except ClientError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc = None

    def crash_at(self, where: str) -> None:
        """A phase prefix or "command:N" (see hostagent.agent.crashhook); "" for none."""
        self.crash_file.write_text(where)

    def restart_after_crash(self) -> None:
        """The hook fired: like systemd, kill what the agent left running, then start it
        again (it reconciles before its socket answers)."""
        assert self.proc is not None
        assert self.proc.wait(120) == -signal.SIGKILL
        subprocess.run(["pkill", "-KILL", "-f", "iscsiadm .*-I hostagent"], check=False)
        self.crash_file.write_text("")
        self.start()

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return Client(self.socket, timeout=600).request(method, path, body=body)[1]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return pystarts.cli("--socket", self.socket, *args)


@pytest.fixture(scope="module")
def daemon(guest: Guest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One agent for the module (it starts slowly in the guest); crash tests restart it."""
    RUN_DIR.mkdir(exist_ok=True)
    d = Daemon(tmp_path_factory.mktemp("agent"))
    d.start()
    yield d
    d.stop()


def write_info(tmp_path: Path, export: Export) -> str:
    path = tmp_path / f"{export.name}.json"
    path.write_text(json.dumps(export.connection_info))
    return str(path)


def cli_attach(daemon: Daemon, tmp_path: Path, export: Export, att_id: str) -> dict[str, Any]:
    result = daemon.cli("attach", "--connection-info", write_info(tmp_path, export),
                        "--id", att_id, "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    att: dict[str, Any] = json.loads(result.stdout)
    assert att["status"] == "attached"
    return att


def assert_attached(att: dict[str, Any], export: Export, paths: int = 2) -> None:
    device = att["device"]
    assert device["wwn"] == export.wwid and device["path"].startswith("/dev/dm-")
    assert len(device["paths"]) == paths
    # The map has every path in its table; multipathd's checker may not have run
    # on a path that was just added, so "ready" is awaited (it polls every 2 s).
    mp = raw.wait_map(export.wwid, paths, timeout=30)
    assert mp.dm == device["path"][5:]


def test_cli_attach_and_detach_both_personalities(array: IscsiArray, daemon: Daemon,
                                                  tmp_path: Path) -> None:
    exports = {"cli-datera": array.export_datera(), "cli-k2": array.export_k2()}
    for att_id, export in exports.items():
        att = cli_attach(daemon, tmp_path, export, att_id)
        assert_attached(att, export)
        check_data(att["device"]["path"])
    listed = daemon.cli("list").stdout
    assert all(att_id in listed for att_id in exports)
    for att_id, export in exports.items():
        result = daemon.cli("detach", att_id)
        assert result.returncode == ExitCode.OK, result.stderr
        assert_nothing_of(export)
        again = daemon.cli("detach", att_id)
        assert again.returncode == ExitCode.OK and "detached" in again.stdout


# The agent is stopped (SIGKILL) after each host command of an operation in turn:
# the crash points between phases ("after login", "after the map went") are among them.
MAX_SWEEP = 40  # more host commands than any one attach or detach makes


def record(name: str, figures: dict[str, Any]) -> None:
    """A test's figures for the record: results/<name>.json (and the test's output)."""
    out = Path(os.environ.get("HOSTAGENT_RESULTS", "/tmp")) / f"{name}.json"
    out.write_text(json.dumps(figures, indent=2))
    print(f"{name}: {figures}")


def record_sweep(name: str, crashes: list[str]) -> None:
    record(f"crash-sweep-{name}", {"steps_covered": len(crashes), "outcomes": crashes})


def test_a_crash_after_each_host_command_of_an_attach_recovers(array: IscsiArray,
                                                                 daemon: Daemon) -> None:
    export = array.export_datera()
    outcomes: list[str] = []
    for n in range(1, MAX_SWEEP + 1):
        att_id = f"sweep-attach-{n}"
        body = {"attachment_id": att_id, "connection_info": export.connection_info}
        daemon.crash_at(f"command:{n}")
        try:
            att = daemon.api("POST", "/v1/attachments", body)
        except ClientError:
            daemon.restart_after_crash()
            att = daemon.api("GET", f"/v1/attachments/{att_id}")
            # Attached and healthy, or failed with nothing left on the host.
            if att["status"] == "attached":
                assert_attached(att, export)
            else:
                assert att["status"] == "failed", att
                assert_nothing_of(export)
            outcomes.append(att["status"])
            assert daemon.api("DELETE", f"/v1/attachments/{att_id}")["status"] == "detached"
            assert_nothing_of(export)
            continue
        daemon.crash_at("")  # the attach made fewer than n commands: the sweep is over
        assert_attached(att, export)
        daemon.api("DELETE", f"/v1/attachments/{att_id}")
        assert_nothing_of(export)
        break
    record_sweep("attach", outcomes)
    assert 4 <= len(outcomes) < MAX_SWEEP


def test_a_crash_after_each_host_command_of_a_detach_is_finished(array: IscsiArray,
                                                                  daemon: Daemon) -> None:
    export = array.export_datera()
    outcomes: list[str] = []
    for n in range(1, MAX_SWEEP + 1):
        att_id = f"sweep-detach-{n}"
        att = daemon.api("POST", "/v1/attachments",
                         {"attachment_id": att_id, "connection_info": export.connection_info})
        assert_attached(att, export)
        daemon.crash_at(f"command:{n}")
        try:
            gone = daemon.api("DELETE", f"/v1/attachments/{att_id}")
        except ClientError:
            daemon.restart_after_crash()
            gone = daemon.api("GET", f"/v1/attachments/{att_id}")
            outcomes.append(gone["status"])
            assert gone["status"] == "detached", gone
            assert_nothing_of(export)
            continue
        daemon.crash_at("")
        assert gone["status"] == "detached"
        assert_nothing_of(export)
        break
    record_sweep("detach", outcomes)
    # multipathd's del map, then one logout of both portals.
    assert 2 <= len(outcomes) < MAX_SWEEP


class ProcessSampler:
    """Every process's argv and environment, sampled while an operation runs (a
    secret on a command line is readable by every user of the host)."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.samples += 1
            for pid in (p for p in os.listdir("/proc") if p.isdigit()):
                for name in ("cmdline", "environ"):
                    with contextlib.suppress(OSError):
                        self.seen.add(Path(f"/proc/{pid}/{name}").read_bytes())


def node_records() -> dict[tuple[int, str], bytes]:
    """(mode, path) -> content of open-iscsi's node records, read in one pass (iscsiadm
    rewrites a record by replacing the file)."""
    found = {}
    for f in Path("/etc/iscsi/nodes").rglob("*"):
        with contextlib.suppress(OSError):
            if f.is_file():
                found[(stat.S_IMODE(f.stat().st_mode), str(f))] = f.read_bytes()
    return found


def test_chap_secrets_appear_nowhere_but_the_node_records(array: IscsiArray,
                                                          daemon: Daemon) -> None:
    datera = array.export_datera(chap=Chap.make(mutual=True))
    discovery = array.set_discovery_chap(Chap.make(mutual=True))
    k2 = array.export_k2(chap=Chap.make())
    k2_info = {**k2.connection_info, "data": {**k2.connection_info["data"], **discovery}}
    infos = {"secret-datera": datera.connection_info, "secret-k2": k2_info}
    secrets = {v.encode() for info in infos.values() for k, v in info["data"].items()
               if "password" in k}
    assert len(secrets) == 5  # one-way and mutual, discovery one-way and mutual, K2 one-way
    answers: list[Any] = []
    with ProcessSampler() as ps:
        for att_id, info in infos.items():
            answers.append(daemon.api("POST", "/v1/attachments",
                                      {"attachment_id": att_id, "connection_info": info}))
        answers.append(daemon.api("GET", "/v1/attachments"))
        answers += [daemon.cli("show", att_id).stdout for att_id in infos]
        records = node_records()
        for att_id in infos:
            answers.append(daemon.api("DELETE", f"/v1/attachments/{att_id}"))
    assert ps.samples > 10
    # The node records (root-only) are where open-iscsi keeps them, and the only place.
    assert any(s in b"".join(records.values()) for s in secrets)
    assert all(mode & 0o077 == 0 for mode, _ in records), sorted(records)
    places = {
        "API answers": json.dumps(answers).encode(),
        "the agent's log (DEBUG)": daemon.log.read_bytes(),
        "the state database": b"".join(f.read_bytes() for f in daemon.state_dir.iterdir()),
        "process arguments and environments": b"\0".join(ps.seen),
    }
    found = {where: sum(s in blob for s in secrets) for where, blob in places.items()}
    record("secrets", {"secrets": len(secrets), "found": found, "process_samples": ps.samples,
                       "distinct_argv_and_environments": len(ps.seen)})
    assert found == dict.fromkeys(places, 0)
    # Files the agent made have the modes it documents.
    assert stat.S_IMODE(daemon.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((daemon.state_dir / "hostagent.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o660
    assert_nothing_of(datera)
    assert_nothing_of(k2)


def test_an_unprivileged_client_is_refused(daemon: Daemon) -> None:
    status, _, err = cli_as_nobody(daemon.socket, "list")
    assert status == ExitCode.FORBIDDEN and "not allowed" in err
    os.chmod(daemon.socket, 0o666)  # even through a too-open socket, SO_PEERCRED refuses
    try:
        status, _, err = cli_as_nobody(daemon.socket, "list")
    finally:
        os.chmod(daemon.socket, 0o660)
    assert status == ExitCode.FORBIDDEN and f"uid {NOBODY} is not allowed" in err


def test_preflight_over_the_api_checks_the_live_node(array: IscsiArray, daemon: Daemon) -> None:
    array.export_datera()  # LIO listens on a portal only while a target uses it
    portal = array.portals[1]
    doc = daemon.api("GET", f"/v1/preflight?portal={portal}")
    checks = {c["id"]: c["status"] for c in doc["checks"]}
    assert checks["service.iscsid"] == checks["service.multipathd"] == "pass", doc
    assert checks[f"portal.{portal}.connect"] == checks[f"portal.{portal}.route"] == "pass"
    # The test bed runs without hostagent's vendor stanzas: found, with the remedy.
    assert checks["multipath.datera"] == "fail" and doc["status"] == "fail"
    # ... and with the distribution's 60-block.rules alone.
    assert checks["udev.lun_change"] == "warn"


def test_another_tools_session_and_map_are_never_touched(array: IscsiArray,
                                                          daemon: Daemon) -> None:
    foreign, ours = array.export_k2(), array.export_datera()

    def other_tool() -> None:  # iscsiadm on the default iface, multipathd builds the map
        for portal in array.portals:
            raw.new_node(foreign.iqn, portal)
            raw.login(foreign.iqn, portal)
        raw.wait_map(foreign.wwid, 2)

    try:
        with ThreadPoolExecutor(1) as pool:
            logged_in = pool.submit(other_tool)
            att = daemon.api("POST", "/v1/attachments", {
                "attachment_id": "beside-another-tool", "connection_info": ours.connection_info})
            logged_in.result()
        assert_attached(att, ours)
        disks = raw.disks_with_wwid(foreign.wwid)
        before = (sorted(probe.sessions()), disks, probe.maps()[foreign.wwid].dm)
        assert daemon.api("DELETE", "/v1/attachments/beside-another-tool")["status"] == \
            "detached"
        assert_nothing_of(ours)
        # The other tool's sessions, disks and map are as they were, all paths up.
        assert sorted(s for s in probe.sessions() if s[1] == foreign.iqn) == \
            [s for s in before[0] if s[1] == foreign.iqn]
        assert raw.disks_with_wwid(foreign.wwid) == disks and len(disks) == 2
        assert raw.wait_map(foreign.wwid, 2).dm == before[2]
    finally:
        raw.remove_map(foreign.wwid)
        raw.delete_disks(raw.disks_with_wwid(foreign.wwid))
        raw.logout_all(foreign.iqn)


LOAD_PARALLEL = 16  # requests in flight at once


def test_load_of_64_requests_over_8_targets_with_retries(
        array: IscsiArray, daemon: Daemon, guest: Guest, tmp_path: Path) -> None:
    # Eight targets: four Datera volumes (a target each) and four K2 systems (a
    # shared IQN each) with seven LUNs each: 32 attaches and 32 detaches, in random
    # order, a quarter of them sent twice at once under the same attachment id.
    arrays = [array]
    for i in range(3):
        (tmp_path / f"array{i}").mkdir()
        arrays.append(IscsiArray(guest, portals=2, workdir=tmp_path / f"array{i}"))
    try:
        exports = [array.export_datera() for _ in range(4)]
        exports += [a.export_k2() for a in arrays for _ in range(7)]
        run_load(daemon, exports, targets=8)
    finally:
        for extra in arrays[1:]:
            extra.close()


def send_all(daemon: Daemon, method: str, requests: list[tuple[str, Any]]
             ) -> list[tuple[int, Any]]:
    client = Client(daemon.socket, timeout=900)
    with ThreadPoolExecutor(LOAD_PARALLEL) as pool:
        return list(pool.map(lambda r: client.request(method, r[0], body=r[1]), requests))


def with_retries(ids: list[str], rng: random.Random) -> list[str]:
    """The ids with a quarter of them repeated, shuffled: retries race the first try."""
    sent = ids + rng.sample(ids, len(ids) // 4)
    rng.shuffle(sent)
    return sent


def run_load(daemon: Daemon, exports: list[Export], targets: int) -> None:
    rng = random.Random(3)
    by_id = {f"load-{i}": e for i, e in enumerate(exports)}
    sent = with_retries(list(by_id), rng)
    retries = len(sent) - len(by_id)
    start = time.monotonic()
    answers = send_all(daemon, "POST", [
        ("/v1/attachments", {"attachment_id": i, "connection_info": by_id[i].connection_info})
        for i in sent])
    attach_s = time.monotonic() - start
    assert sorted(status for status, _ in answers) == sorted(
        [200] * (len(sent) - len(by_id)) + [201] * len(by_id))
    for (_, att), att_id in zip(answers, sent, strict=True):
        assert att["id"] == att_id and att["status"] == "attached"
    for att_id, export in by_id.items():
        assert_attached(daemon.api("GET", f"/v1/attachments/{att_id}"), export)
    assert len(probe.sessions()) == targets * 2
    # Half go, then the rest: a target's sessions stay exactly while it has a LUN here.
    first = rng.sample(list(by_id), len(by_id) // 2)
    start = time.monotonic()
    for ids in (first, [i for i in by_id if i not in first]):
        sent = with_retries(ids, rng)
        retries += len(sent) - len(ids)
        answers = send_all(daemon, "DELETE", [(f"/v1/attachments/{i}", None) for i in sent])
        assert {(status, att["status"]) for status, att in answers} == {(200, "detached")}
        for att_id in ids:  # a K2 LUN's sessions stay while its target has others here
            assert not raw.disks_with_wwid(by_id[att_id].wwid)
            assert by_id[att_id].wwid not in probe.maps()
        left = {by_id[i].iqn for i in by_id if i not in first} if ids is first else set()
        assert {iqn for _, iqn in probe.sessions()} == left
    detach_s = time.monotonic() - start
    requests = 2 * len(by_id)
    record("load", {"requests": requests, "retries": retries, "targets": targets,
                    "attach_seconds": round(attach_s, 1), "detach_seconds": round(detach_s, 1)})
    left_ids = [a["id"] for a in daemon.api("GET", "/v1/attachments")["attachments"]
                if a["status"] != "detached"]
    assert not [i for i in left_ids if i.startswith("load-")], left_ids
