"""Retries and deadlines counted on the injected Clock: a FakeClock records each
wait, so a test sees the back-off without sleeping it (or patching constants)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from hostagent.connectors.fc import FcConnector
from hostagent.connectors.iscsi import IscsiConnector
from hostagent.errors import CommandFailed, DeviceBusy, DeviceTimeout
from hostagent.host.fs import HostFS
from hostagent.host.iscsiadm import Iscsiadm, IscsiErr
from hostagent.host.udev import PyudevWatcher
from hostagent.models import Portal
from tests.unit.fakehost import FakeKernel, FakeMultipathd, FakeUdev
from tests.unit.fakes import FakeClock, FakeExecutor
from tests.unit.iscsihost import IQN, P1, P2, WWID, Host, datera


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ---- wiring ------------------------------------------------------------------------
def test_both_engines_hand_their_clock_down(tmp_path: Path, clock: FakeClock) -> None:
    kernel = FakeKernel(tmp_path)
    fs, mpd, executor = HostFS(tmp_path), FakeMultipathd(kernel), FakeExecutor()
    iscsi = IscsiConnector(executor, fs, FakeUdev(), mpd, clock=clock)
    fc = FcConnector(executor, fs, FakeUdev(), mpd, clock=clock)
    assert iscsi.iscsiadm.clock is clock and iscsi.devices.clock is clock
    assert fc.devices.clock is clock


# ---- a map briefly held open -----------------------------------------------------------
class HeldMultipathd(FakeMultipathd):
    """multipathd refusing `del map` while udev or blkid still hold the map: the
    first `refusals` removals fail, then the map goes."""

    def __init__(self, kernel: FakeKernel, refusals: int) -> None:
        super().__init__(kernel)
        self.refusals = refusals

    async def command(self, cmd: str, *, timeout: float) -> str:
        if cmd.startswith("del map ") and self.refusals > 0:
            self.refusals -= 1
            self.commands.append(cmd)
            return "fail\n"
        return await super().command(cmd, timeout=timeout)


def attached_host(tmp_path: Path, clock: FakeClock, refusals: int) -> tuple[Host, str]:
    """A Datera volume attached over two portals, its map refused `refusals` times."""
    host = Host(tmp_path)
    host.mpd = HeldMultipathd(host.kernel, refusals)
    host.connector = IscsiConnector(host.executor, host.fs, FakeUdev(host.kernel), host.mpd,
                                    clock=clock)
    host.kernel.luns[(IQN, 0)] = WWID
    for p in (P1, P2):
        host.expect_new_node(IQN, p)
        host.expect_login(IQN, p)
    host.attach(datera())
    dm = host.kernel.dm_of(WWID)
    assert dm is not None
    return host, dm


def test_a_busy_map_is_retried_with_a_growing_wait(tmp_path: Path, clock: FakeClock) -> None:
    host, dm = attached_host(tmp_path, clock, refusals=2)  # the default allows 3 attempts
    forced = asyncio.run(host.connector.devices.remove_map(WWID, dm, force=False))
    assert not forced and host.kernel.dm_of(WWID) is None
    assert host.mpd.commands.count(f"del map {WWID}") == 3
    assert clock.sleeps == pytest.approx([0.2, 0.4])


def test_a_map_that_stays_busy_is_refused_without_a_wait_after_the_last_try(
        tmp_path: Path, clock: FakeClock) -> None:
    host, dm = attached_host(tmp_path, clock, refusals=99)
    with pytest.raises(DeviceBusy):
        asyncio.run(host.connector.devices.remove_map(WWID, dm, force=False))
    assert host.kernel.dm_of(WWID) == dm  # never forced
    assert clock.sleeps == pytest.approx([0.2, 0.4])


def test_a_free_map_goes_without_a_wait(tmp_path: Path, clock: FakeClock) -> None:
    host, dm = attached_host(tmp_path, clock, refusals=0)
    asyncio.run(host.connector.devices.remove_map(WWID, dm, force=False))
    assert host.kernel.dm_of(WWID) is None and clock.sleeps == []


# ---- the node db raced by another iscsiadm ---------------------------------------------
NEW_NODE = ["iscsiadm", "-m", "node", "-T", IQN, "-p", P1, "-I", "hostagent", "-o", "new"]


def node_db(tmp_path: Path, clock: FakeClock) -> tuple[Iscsiadm, FakeExecutor, Path]:
    executor = FakeExecutor()
    record = tmp_path / "etc/iscsi/nodes" / IQN / P1.replace(":", ",")
    return Iscsiadm(executor, HostFS(tmp_path), clock=clock), executor, record


def test_an_idbm_failure_is_retried_with_a_growing_wait(tmp_path: Path,
                                                        clock: FakeClock) -> None:
    adm, executor, record = node_db(tmp_path, clock)

    def made() -> None:
        record.parent.mkdir(parents=True)
        record.write_text("node.name = x\niface.iscsi_ifacename = hostagent\n")

    executor.expect(NEW_NODE, returncode=IscsiErr.IDBM, times=2)
    executor.expect(NEW_NODE, side_effect=made)
    asyncio.run(adm.create_node(IQN, Portal.parse(P1), {"node.session.scan": "manual"}))
    executor.assert_done()
    assert "node.session.scan = manual" in record.read_text()
    assert clock.sleeps == pytest.approx([0.1, 0.2])


def test_an_idbm_failure_that_persists_is_raised(tmp_path: Path, clock: FakeClock) -> None:
    adm, executor, _ = node_db(tmp_path, clock)
    executor.expect(NEW_NODE, returncode=IscsiErr.IDBM, times=3)
    with pytest.raises(CommandFailed) as err:
        asyncio.run(adm.create_node(IQN, Portal.parse(P1), {}))
    executor.assert_done()
    assert err.value.returncode == IscsiErr.IDBM
    assert clock.sleeps == pytest.approx([0.1, 0.2])


def test_other_node_db_failures_are_not_retried(tmp_path: Path, clock: FakeClock) -> None:
    adm, executor, _ = node_db(tmp_path, clock)
    executor.expect(NEW_NODE, returncode=IscsiErr.INVAL)
    with pytest.raises(CommandFailed):
        asyncio.run(adm.create_node(IQN, Portal.parse(P1), {}))
    executor.assert_done()
    assert clock.sleeps == []


# ---- the udev wait's deadline ------------------------------------------------------------
class NoNetlinkWatcher(PyudevWatcher):
    """PyudevWatcher without its netlink monitor: no event ever comes, so only
    the deadline (and the slow recheck) end a wait; no udev is needed."""

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop


def ticking(clock: FakeClock, step: float, checks: list[float],
            value_at: int | None = None) -> Callable[[], str | None]:
    """A check that takes `step` seconds of the clock each time it runs."""

    def check() -> str | None:
        checks.append(clock.monotonic())
        clock.advance(step)
        return "sda" if value_at is not None and len(checks) == value_at else None

    return check


def test_the_deadline_is_counted_on_the_clock(clock: FakeClock) -> None:
    checks: list[float] = []
    watcher = NoNetlinkWatcher(clock=clock)
    # On the real clock this wait would last its 30 s; the check itself uses them up.
    with pytest.raises(DeviceTimeout) as err:
        asyncio.run(watcher.wait(ticking(clock, 31.0, checks), timeout=30.0, what="sda"))
    assert checks == [1000.0] and err.value.details["timeout"] == 30.0


def test_a_wait_rechecks_until_the_deadline(clock: FakeClock) -> None:
    checks: list[float] = []
    watcher = NoNetlinkWatcher(clock=clock)
    # The real waits between checks are bounded by what the clock says is left:
    # 0.03 s, then 0.01 s; the third check finds the deadline passed.
    with pytest.raises(DeviceTimeout):
        asyncio.run(watcher.wait(ticking(clock, 0.02, checks), timeout=0.05, what="sda"))
    assert checks == pytest.approx([1000.0, 1000.02, 1000.04])


def test_a_wait_returns_what_the_check_found_before_the_deadline(clock: FakeClock) -> None:
    checks: list[float] = []
    watcher = NoNetlinkWatcher(clock=clock)
    found = asyncio.run(watcher.wait(ticking(clock, 0.01, checks, value_at=2), timeout=0.05,
                                     what="sda"))
    assert found == "sda" and len(checks) == 2


GUEST = Path(__file__).resolve().parents[1] / "fixtures/guest"
LUN_CHANGE = (GUEST / "udev_lun_change.bin").read_bytes()
BLOCK_CHANGE = (GUEST / "udev_block_change.bin").read_bytes()


def drained(datagrams: list[bytes]) -> list[bool]:
    """Whether each of two waiters was woken by one drain of `datagrams`, all of
    which it must have read."""
    ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # queues a burst, as netlink
    ours.bind(("127.0.0.1", 0))
    ours.setblocking(False)
    theirs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    theirs.connect(ours.getsockname())
    watcher = PyudevWatcher()
    watcher._fd = ours.fileno()  # the monitor's place: a socket the test writes to
    woken = [asyncio.Event(), asyncio.Event()]
    watcher._waiters.update(woken)
    for datagram in datagrams:
        theirs.send(datagram)
    watcher._drain()
    with pytest.raises(BlockingIOError):
        ours.recv(1)  # every datagram was read
    theirs.close()
    ours.close()
    return [w.is_set() for w in woken]


def test_a_burst_of_events_is_drained_unparsed_and_wakes_each_waiter_once() -> None:
    # A LUN added to a target with ~30 others, on the stock udev rules.
    assert drained([BLOCK_CHANGE, LUN_CHANGE] * 50) == [True, True]


def test_a_burst_of_lun_changes_alone_wakes_no_waiter() -> None:
    assert drained([LUN_CHANGE] * 64) == [False, False]
    assert drained([LUN_CHANGE] * 63 + [BLOCK_CHANGE]) == [True, True]
