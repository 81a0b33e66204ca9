"""Health checks and self-healing of `hostagent serve` on the real kernel.

One agent for the module, checking every 2 s with self-healing on; the
self-healing-off test runs the agent's parts in-process instead of a second agent.
Every wait is bounded; the health outputs seen are saved to the results folder
(health-*.txt, metrics.txt).
"""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostagent.agent.service import AttachRequest, Service
from hostagent.agent.state import Store
from hostagent.connection_info import ISCSI, parse
from hostagent.exitcodes import ExitCode, HealthExit
from hostagent.health import HealthMonitor, HealthOptions
from hostagent.host.fs import HostFS
from tests.kernel import rawtools as raw
from tests.kernel.test_daemon import RUN_DIR, Daemon
from tests.kernel.test_fc_connector import wait_link_down
from tests.kernel.test_iscsi_connector import assert_nothing_of, check_data, native_host
from tests.kernel.testbed import probe
from tests.kernel.testbed.faults import Faults
from tests.kernel.testbed.fcoe import FcArray
from tests.kernel.testbed.guest import Guest
from tests.kernel.testbed.lio import Export, IscsiArray
from tests.kernel.testbed.sh import run, wait_until

RESULTS = Path(os.environ.get("HOSTAGENT_RESULTS", "/tmp"))
BLOCK = 64 * 1024


class HealthDaemon(Daemon):
    """The test agent with a fast health loop."""

    def configure(self) -> None:
        self.config.write_text(self.config.read_text() +
                               "[health]\ninterval = 2\nheal_interval = 5\n")

    def health(self) -> dict[str, Any]:
        report: dict[str, Any] = self.api("GET", "/v1/health")
        return report

    def status_of(self, att_id: str) -> str | None:
        for att in self.health()["attachments"]:
            if att["id"] == att_id:
                return str(att["status"])
        return None

    def wait_status(self, att_id: str, status: str, timeout: float) -> float:
        start = time.monotonic()
        wait_until(lambda: self.status_of(att_id) == status, timeout=timeout, interval=1,
                   what=f"{att_id} to be {status}")
        return time.monotonic() - start

    def save_cli_health(self, name: str, expect: HealthExit) -> str:
        result = self.cli("health")
        (RESULTS / f"health-{name}.txt").write_text(result.stdout + result.stderr)
        assert result.returncode == expect, result.stdout + result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def daemon(guest: Guest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HealthDaemon]:
    RUN_DIR.mkdir(exist_ok=True)
    d = HealthDaemon(tmp_path_factory.mktemp("health-agent"))
    d.configure()
    d.start()
    yield d
    d.stop()


def attach(daemon: Daemon, tmp_path: Path, connection_info: dict[str, Any], name: str,
           att_id: str) -> dict[str, Any]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(connection_info))
    result = daemon.cli("attach", "--connection-info", str(path), "--id", att_id, "--json")
    assert result.returncode == ExitCode.OK, result.stderr
    att: dict[str, Any] = json.loads(result.stdout)
    return att


def detach(daemon: Daemon, att_id: str) -> None:
    result = daemon.cli("detach", att_id)
    assert result.returncode == ExitCode.OK, result.stderr


class Writer:
    """Writes and reads back blocks through the map with O_DIRECT while a test breaks
    paths: every block read must be the one written, and no call may fail."""

    def __init__(self, device: str, blocks: int = 64) -> None:
        self.device, self.blocks = device, blocks
        self.errors: list[str] = []
        self.rounds = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(120)
        assert not self.thread.is_alive(), "I/O hangs on the map"

    def _run(self) -> None:
        out, back = mmap.mmap(-1, BLOCK), mmap.mmap(-1, BLOCK)
        fd = os.open(self.device, os.O_RDWR | os.O_DIRECT)
        try:
            while not self.stop.is_set():
                for i in range(self.blocks):
                    out[:] = os.urandom(BLOCK)
                    os.pwritev(fd, [out], i * BLOCK)
                    os.preadv(fd, [back], i * BLOCK)
                    if back[:] != out[:]:
                        self.errors.append(f"block {i} read back differs")
                self.rounds += 1
        except OSError as err:
            self.errors.append(f"{type(err).__name__}: {err}")
        finally:
            os.close(fd)


def get_text(socket_path: str, path: str) -> str:
    """A plain-text answer of the agent (the API client wants JSON)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(socket_path)
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: hostagent\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head
    return body.decode()


def session_of(export: Export, portal: str) -> bool:
    return (portal, export.iqn) in probe.sessions()


def test_a_blocked_portal_under_io_degrades_then_heals(
        array: IscsiArray, daemon: HealthDaemon, faults: Faults, tmp_path: Path) -> None:
    export = array.export_datera()
    att = attach(daemon, tmp_path, export.connection_info, export.name, "h-block")
    raw.wait_map(export.wwid, 2, timeout=30)
    daemon.wait_status("h-block", "healthy", timeout=30)
    with Writer(att["device"]["path"]) as io:
        faults.block_portal(array.portals[1])
        took = daemon.wait_status("h-block", "degraded", timeout=60)
        (RESULTS / "health-timings.txt").write_text(f"degraded after {took:.1f} s\n")
        out = daemon.save_cli_health("degraded", HealthExit.DEGRADED)
        assert array.portals[1] in out
        rounds = io.rounds
        wait_until(lambda: io.rounds > rounds + 1 or io.errors, timeout=60,
                   what="I/O to go on over the remaining path")
        faults.unblock_portal(array.portals[1])
        took = daemon.wait_status("h-block", "healthy", timeout=120)
        with (RESULTS / "health-timings.txt").open("a") as f:
            f.write(f"healthy after {took:.1f} s\n")
        daemon.save_cli_health("healthy", HealthExit.HEALTHY)
    assert io.errors == [] and io.rounds > 0
    check_data(att["device"]["path"])
    metrics = get_text(daemon.socket, "/metrics")
    (RESULTS / "metrics.txt").write_text(metrics)
    assert 'hostagent_paths{state="up"} 2.0' in metrics.splitlines()
    assert 'hostagent_operation_seconds_count{operation="attach",outcome="ok"}' in metrics
    detach(daemon, "h-block")
    assert_nothing_of(export)


def log_out(export: Export, portal: str) -> None:
    run(["iscsiadm", "-m", "node", "-T", export.iqn, "-p", portal, "-I", "hostagent",
         "--logout"])


def test_a_session_logged_out_behind_our_back_is_logged_in_again(
        array: IscsiArray, daemon: HealthDaemon, tmp_path: Path) -> None:
    export = array.export_datera()
    att = attach(daemon, tmp_path, export.connection_info, export.name, "h-login")
    raw.wait_map(export.wwid, 2, timeout=30)
    log_out(export, array.portals[1])
    wait_until(lambda: session_of(export, array.portals[1]), timeout=60, interval=1,
               what="self-healing to log the session in again")
    raw.wait_map(export.wwid, 2, timeout=60)
    daemon.wait_status("h-login", "healthy", timeout=60)
    actions = daemon.health()["self_heal"]["actions"]
    assert any(a["action"] == "login" and a["outcome"] == "ok" and
               a["path"] == array.portals[1] for a in actions), actions
    check_data(att["device"]["path"])
    detach(daemon, "h-login")
    assert_nothing_of(export)


def test_with_self_healing_off_it_stays_degraded(array: IscsiArray, tmp_path: Path) -> None:
    # In-process (the agent's own parts on the real host) rather than a second agent:
    # an agent start costs ~50 s in the emulated guest. The module's agent, healing on,
    # leaves this attachment alone: it is not in its state store.
    host = native_host()
    service = Service(Store(tmp_path / "state"), {ISCSI: host.connector})
    monitor = HealthMonitor(service, HostFS("/"), host.mpd,
                            options=HealthOptions(self_heal=False, probe=False))
    export = array.export_datera()
    info = export.connection_info
    asyncio.run(service.attach(AttachRequest("h-off", info, parse(info), None, True, 300)))
    raw.wait_map(export.wwid, 2, timeout=30)
    log_out(export, array.portals[1])
    calls = host.executor.calls

    def verdict() -> str:
        return asyncio.run(monitor.run_once()).verdict.value

    wait_until(lambda: verdict() == "degraded", timeout=30, interval=1,
               what="the volume to be degraded")
    for _ in range(3):  # a healing agent would log in at the first of these rounds
        time.sleep(2)
        assert verdict() == "degraded"
    assert not session_of(export, array.portals[1])
    assert host.executor.calls == calls and asyncio.run(monitor.check()).actions == ()
    asyncio.run(service.detach("h-off"))
    assert_nothing_of(export)


def test_an_fc_link_down_shows_degraded(fc_array: FcArray, daemon: HealthDaemon,
                                        faults: Faults, tmp_path: Path) -> None:
    fabric = fc_array.fabric
    export = fc_array.export()
    att = attach(daemon, tmp_path, export.connection_info, export.name, "h-fc")
    raw.wait_map(export.wwid, 2, timeout=60)
    daemon.wait_status("h-fc", "healthy", timeout=30)
    faults.fc_link_down(0)
    wait_link_down(fabric, 0)
    daemon.wait_status("h-fc", "degraded", timeout=60)
    (h,) = [a for a in daemon.health()["attachments"] if a["id"] == "h-fc"]
    assert any(fabric.links[0].initiator_wwpn in r for r in h["reasons"]), h["reasons"]
    (RESULTS / "health-fc-degraded.txt").write_text(daemon.cli("health").stdout)
    check_data(att["device"]["path"])
    faults.fc_link_up(0)
    fabric.wait_online(fabric.links[0])
    daemon.wait_status("h-fc", "healthy", timeout=120)
    detach(daemon, "h-fc")
    assert not raw.disks_with_wwid(export.wwid)
    assert export.wwid not in probe.maps()
