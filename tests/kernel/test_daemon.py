"""The agent on the real kernel: `hostagent serve` in the guest, driven by
hostagent-cli and the HTTP API; crashes at every step of an attach and a detach."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from hostagent.client import Client, ClientError
from hostagent.exitcodes import ExitCode
from hostagent.service import CRASH_FILE_ENV
from tests.kernel import rawtools as raw
from tests.kernel.test_iscsi_connector import assert_nothing_of, check_data
from tests.kernel.testbed import probe
from tests.kernel.testbed.guest import Guest
from tests.kernel.testbed.lio import Export, IscsiArray
from tests.kernel.testbed.sh import wait_until
from tests.unprivileged import NOBODY, cli_as_nobody

RUN_DIR = Path("/run/hostagent-test")


class Daemon:
    """`hostagent serve` as a child process with its own config and state, and the
    crash hook's file (service.CRASH_FILE_ENV) to stop it at a chosen phase."""

    def __init__(self, root: Path) -> None:
        self.socket = str(RUN_DIR / "hostagent.sock")
        self.config = root / "hostagent.conf"
        self.config.write_text(
            f"[DEFAULT]\nsocket = {self.socket}\nstate_dir = {root / 'state'}\n"
            f"lock_path = {root / 'locks'}\nlog_level = DEBUG\nsocket_group = 0\n"
            # An emulated guest: udev takes far longer per disk than a real host
            # when twenty attaches land at once.
            "[timeouts]\ndevice = 180\nattach = 900\n")
        self.crash_file = root / "crash-at"
        self.crash_file.write_text("")
        self.log = Path(os.environ.get("HOSTAGENT_RESULTS", "/tmp")) / "daemon-test.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            log.write(f"\n==== start at {time.strftime('%H:%M:%S')}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from hostagent.daemon import main; "
                 "sys.exit(main())", "serve", "--config", str(self.config)],
                stdout=log, stderr=log, env={**os.environ, CRASH_FILE_ENV: str(self.crash_file)})
        try:  # Python starts slowly in an emulated guest that shares files over 9p
            wait_until(self._answers, timeout=240, what="the agent's socket")
        except BaseException:
            self.stop()
            raise

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

    def crash_at(self, phase: str) -> None:
        self.crash_file.write_text(phase)

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
        return subprocess.run(
            [sys.executable, "-c", "import sys; from hostagent.cli import main; sys.exit(main())",
             "--socket", self.socket, *args], capture_output=True, text=True, timeout=600)


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


# Phases an operation reports, and so where the crash hook can stop the agent.
ATTACH_CRASHES = {"after login": "scanning", "after scan": "disk ", "after map": "recording"}
DETACH_CRASHES = {"after the map went": "removing the disks", "before logout": "logging out"}


@pytest.mark.parametrize("where", list(ATTACH_CRASHES))
def test_a_crash_during_attach_is_undone_on_restart(array: IscsiArray, daemon: Daemon,
                                                    where: str) -> None:
    export = array.export_datera()
    att_id = f"crash-{where.replace(' ', '-')}"
    body = {"attachment_id": att_id, "connection_info": export.connection_info}
    daemon.crash_at(ATTACH_CRASHES[where])
    with pytest.raises(ClientError):
        daemon.api("POST", "/v1/attachments", body)
    daemon.restart_after_crash()
    att = daemon.api("GET", f"/v1/attachments/{att_id}")
    assert att["status"] == "failed" and att["last_error"]["code"] == "interrupted"
    assert_nothing_of(export)
    # The same request again now attaches, and detaches cleanly.
    again = daemon.api("POST", "/v1/attachments", body)
    assert_attached(again, export)
    daemon.api("DELETE", f"/v1/attachments/{att_id}")
    assert_nothing_of(export)


@pytest.mark.parametrize("where", list(DETACH_CRASHES))
def test_a_crash_during_detach_is_finished_on_restart(array: IscsiArray, daemon: Daemon,
                                                      where: str) -> None:
    export = array.export_datera()
    att_id = f"crash-{where.replace(' ', '-')}"
    att = daemon.api("POST", "/v1/attachments",
                     {"attachment_id": att_id, "connection_info": export.connection_info})
    assert_attached(att, export)
    daemon.crash_at(DETACH_CRASHES[where])
    with pytest.raises(ClientError):
        daemon.api("DELETE", f"/v1/attachments/{att_id}")
    daemon.restart_after_crash()
    assert daemon.api("GET", f"/v1/attachments/{att_id}")["status"] == "detached"
    assert_nothing_of(export)


def test_an_unprivileged_client_is_refused(daemon: Daemon) -> None:
    status, _, err = cli_as_nobody(daemon.socket, "list")
    assert status == ExitCode.FORBIDDEN and "not allowed" in err
    os.chmod(daemon.socket, 0o666)  # even through a too-open socket, SO_PEERCRED refuses
    try:
        status, _, err = cli_as_nobody(daemon.socket, "list")
    finally:
        os.chmod(daemon.socket, 0o660)
    assert status == ExitCode.FORBIDDEN and f"uid {NOBODY} is not allowed" in err


def test_twenty_concurrent_attaches_over_five_targets(
        array: IscsiArray, daemon: Daemon, guest: Guest, tmp_path: Path) -> None:
    # Five K2-style systems (a shared IQN each), four LUNs on each: attaches on one
    # target share its sessions, attaches on different targets run side by side.
    arrays = [array]
    for i in range(4):
        (tmp_path / f"array{i}").mkdir()
        arrays.append(IscsiArray(guest, portals=2, workdir=tmp_path / f"array{i}"))
    try:
        exports = [a.export_k2() for a in arrays for _ in range(4)]
        run_load(daemon, exports)
    finally:
        for extra in arrays[1:]:
            extra.close()


def run_load(daemon: Daemon, exports: list[Export]) -> None:
    def all_at_once(method: str, requests: list[tuple[str, Any]]) -> list[Any]:
        client = Client(daemon.socket, timeout=900)
        with ThreadPoolExecutor(len(requests)) as pool:
            return list(pool.map(lambda r: client.request(method, r[0], body=r[1]), requests))

    order = [(f"load-{i}", e) for i, e in enumerate(exports)]
    random.Random(3).shuffle(order)
    start = time.monotonic()
    answers = all_at_once("POST", [
        ("/v1/attachments", {"attachment_id": i, "connection_info": e.connection_info})
        for i, e in order])
    attach_s = time.monotonic() - start
    assert [status for status, _ in answers] == [201] * len(order)
    for (_, att), (_, export) in zip(answers, order, strict=True):
        assert_attached(att, export)
    assert len(probe.sessions()) == 5 * 2
    random.Random(4).shuffle(order)
    start = time.monotonic()
    all_at_once("DELETE", [(f"/v1/attachments/{i}", None) for i, _ in order])
    print(f"{len(order)} attaches over 5 targets: {attach_s:.1f} s; "
          f"{len(order)} detaches: {time.monotonic() - start:.1f} s")
    for export in exports:
        assert_nothing_of(export)
    left = [a["id"] for a in daemon.api("GET", "/v1/attachments")["attachments"]]
    assert not [i for i in left if i.startswith("load-")], left
