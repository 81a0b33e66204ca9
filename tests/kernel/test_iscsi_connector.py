"""The native iSCSI connector on the real kernel, against the LIO array.

Every test ends with the plugin's leak check: no session, node record, sd, dm,
loop device or LIO object may be left behind.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostagent.connection_info import parse
from hostagent.connectors.iscsi import IscsiConnector, IscsiOptions
from hostagent.errors import AuthenticationFailed
from hostagent.host.executor import AsyncExecutor
from hostagent.host.fs import HostFS
from hostagent.host.multipath import SocketClient
from hostagent.host.udev import PyudevWatcher
from hostagent.models import Device, IscsiVolume
from tests.kernel import rawtools as raw
from tests.kernel.engine import MIB, EngineHost, check_data, write_metrics
from tests.kernel.testbed import guest as guest_mod
from tests.kernel.testbed import probe
from tests.kernel.testbed.faults import Faults
from tests.kernel.testbed.lio import Chap, Export, IscsiArray
from tests.kernel.testbed.sh import run

METRICS: dict[str, Any] = {}


def native_host() -> EngineHost:
    """The native iSCSI engine on the real host."""
    executor, mpd = AsyncExecutor(), SocketClient()
    # Emulation: a burst of disks can keep udev busy past a real host's 30 s.
    return EngineHost(IscsiConnector(executor, HostFS("/"), PyudevWatcher(), mpd,
                                     options=IscsiOptions(device_timeout=90)),
                      executor, mpd, METRICS)


@pytest.fixture
def host() -> EngineHost:
    return native_host()


@pytest.fixture(scope="module", autouse=True)
def metrics() -> Iterator[dict[str, Any]]:
    yield from write_metrics(METRICS, "iscsi-metrics.json")


def timed(name: str, host: EngineHost, coro: Any) -> Any:
    return host.timed(name, coro)


def assert_nothing_of(export: Export) -> None:
    assert not raw.disks_with_wwid(export.wwid)
    assert export.wwid not in probe.maps()
    assert not [s for s in probe.sessions() if s[1] == export.iqn]
    assert not [r for r in probe.node_records() if export.iqn in r]


@pytest.mark.parametrize("array", [2, 3], indirect=True)
def test_datera_attach_detach_on_every_portal(array: IscsiArray, host: EngineHost) -> None:
    export = array.export_datera()
    n = len(array.portals)
    device = timed(f"datera_attach_{n}_portals", host, host.attach(export))
    raw.assert_map(device, export.wwid, n)
    assert device.missing == ()
    assert device.size_bytes == 64 * MIB
    check_data(device.path)
    timed(f"datera_detach_{n}_portals", host, host.detach(export, device))
    assert_nothing_of(export)


@pytest.mark.parametrize("policy", ["no", "yes", "strict"])
def test_attach_works_with_any_find_multipaths_policy(
        array: IscsiArray, host: EngineHost, policy: str) -> None:
    guest_mod.set_find_multipaths(policy)
    try:
        export = array.export_datera()
        device = timed(f"attach_find_multipaths_{policy}", host, host.attach(export))
        raw.assert_map(device, export.wwid, 2)
        asyncio.run(host.detach(export, device))
        assert_nothing_of(export)
    finally:
        guest_mod.set_find_multipaths("no")


def test_k2_four_luns_shuffled_detach_keeps_sessions_until_the_last(
        array: IscsiArray, host: EngineHost) -> None:
    exports = [array.export_k2() for _ in range(4)]
    assert isinstance(parse(exports[0].connection_info), IscsiVolume)
    devices = {}
    for e in exports:  # singular keys: SendTargets finds the second portal
        devices[e.lun] = timed("k2_attach_shared_iqn", host, host.attach(e))
        raw.assert_map(devices[e.lun], e.wwid, 2)
    assert len(probe.sessions()) == 2
    # SendTargets, 2 records and 2 logins; the later LUNs reuse the answer on live sessions.
    runs = [m["processes"] for m in host.metrics["k2_attach_shared_iqn"][-4:]]
    assert runs[0] >= 5 and runs[1:] == [0, 0, 0], runs
    order = exports[:]
    random.Random(7).shuffle(order)
    for i, e in enumerate(order):
        timed("k2_detach_shared_iqn", host, host.detach(e, devices[e.lun]))
        assert not raw.disks_with_wwid(e.wwid)
        remaining = len(order) - i - 1
        assert len(probe.sessions()) == (2 if remaining else 0), f"after {i + 1} detaches"
        for other in order[i + 1:]:
            assert probe.maps()[other.wwid].active == 2
    assert probe.node_records() == []


@pytest.mark.parametrize("mutual", [False, True])
def test_chap_attach_and_a_wrong_secret_leaves_nothing(
        array: IscsiArray, host: EngineHost, mutual: bool) -> None:
    chap = Chap.make(mutual=mutual)
    export = array.export_datera(chap=chap)
    device = asyncio.run(host.attach(export))
    raw.assert_map(device, export.wwid, 2)
    asyncio.run(host.detach(export, device))

    data = export.connection_info["data"]
    key = "auth_password_in" if mutual else "auth_password"
    bad = {**export.connection_info, "data": {**data, key: "wrong" + data[key]}}
    with pytest.raises(AuthenticationFailed):
        asyncio.run(host.connector.attach(parse(bad), multipath=True))
    assert_nothing_of(export)


def test_discovery_chap(array: IscsiArray, host: EngineHost) -> None:
    keys = array.set_discovery_chap(Chap.make())
    export = array.export_k2()
    info = {**export.connection_info, "data": {**export.connection_info["data"], **keys}}
    device = asyncio.run(host.connector.attach(parse(info), multipath=True))
    raw.assert_map(device, export.wwid, 2)
    asyncio.run(host.connector.detach(parse(info), device))
    bad = {**info, "data": {**info["data"], "discovery_auth_password": "wrong-secret"}}
    with pytest.raises(AuthenticationFailed):
        asyncio.run(host.connector.attach(parse(bad), multipath=True))
    assert_nothing_of(export)


def test_a_blocked_portal_gives_a_one_path_device_in_bounded_time(
        array: IscsiArray, host: EngineHost, faults: Faults) -> None:
    export = array.export_datera()
    faults.block_portal(array.portals[1])
    start = time.monotonic()
    device = timed("attach_one_portal_blocked", host, host.attach(export))
    elapsed = time.monotonic() - start
    raw.assert_map(device, export.wwid, 1)
    assert len(device.missing) == 1 and device.missing[0].startswith(array.portals[1])
    # Bounded by the login timeout (5 s x 2 attempts) plus the healthy path's own work.
    assert elapsed < 40, f"attach with a dead portal took {elapsed:.1f} s"
    check_data(device.path)
    # The target rests at the dead portal: attached again, it does not log in there.
    asyncio.run(host.detach(export, device))
    processes = host.executor.calls
    again = timed("attach_portal_resting", host, host.attach(export))
    assert host.executor.calls - processes == 2  # a node record and a login, both on portal 0
    raw.assert_map(again, export.wwid, 1)
    assert len(again.missing) == 1 and "portal_resting" in again.missing[0], again.missing
    # Another target there is still tried: a login's failure is its target's evidence.
    second = array.export_datera()
    processes = host.executor.calls
    other = timed("attach_other_target_tried", host, host.attach(second))
    assert host.executor.calls - processes == 4  # a record and a login on each portal
    raw.assert_map(other, second.wwid, 1)
    assert len(other.missing) == 1 and "portal_unreachable" in other.missing[0], other.missing
    asyncio.run(host.detach(second, other))
    asyncio.run(host.detach(export, again))
    assert_nothing_of(export)
    assert_nothing_of(second)


def test_lun_id_reuse_returns_the_new_volume(array: IscsiArray, host: EngineHost) -> None:
    keeper = array.export_k2()  # keeps the sessions up, as other volumes would
    keep_dev = asyncio.run(host.attach(keeper))
    old = array.export_k2()
    for session in Path("/sys/class/iscsi_session").iterdir():  # a leftover sd per path
        hostno = Path(os.path.realpath(session)).parents[2].name
        Path(f"/sys/class/scsi_host/{hostno}/scan").write_text(f"0 0 {old.lun}")
    raw.wait_disks(old.wwid, 2)
    # As a leftover sits on a real host: multipathd (find_multipaths no) has mapped it and
    # udev is done with it. Replaced sooner, the outcome turns on which of udev's blkid and
    # multipathd's checker meets the gone LUN first: a stale map held open is refused.
    raw.wait_map(old.wwid, 2)
    run(["udevadm", "settle", "-t", "30"])
    new = array.replace(old)  # same LUN id, another backstore
    assert new.lun == old.lun and new.wwid != old.wwid
    device = asyncio.run(host.attach(new))
    assert device.wwn == new.wwid
    raw.assert_map(device, new.wwid, 2)
    assert not raw.disks_with_wwid(old.wwid) and old.wwid not in probe.maps()
    asyncio.run(host.detach(new, device))
    asyncio.run(host.detach(keeper, keep_dev))


def test_extend_after_the_lun_grew(array: IscsiArray, host: EngineHost) -> None:
    export = array.export_datera(size_mb=64)
    device = asyncio.run(host.attach(export))
    array.grow(export, 96)
    size = asyncio.run(host.connector.extend(parse(export.connection_info), device))
    assert size == 96 * MIB
    assert int(Path(f"/sys/block/{device.path[5:]}/size").read_text()) * 512 == 96 * MIB
    asyncio.run(host.detach(export, device))


@pytest.mark.parametrize("policy", ["strict", "no"])
def test_single_path_mode(array: IscsiArray, host: EngineHost, policy: str) -> None:
    guest_mod.set_find_multipaths(policy)
    try:
        export = array.export_datera()
        device = timed("attach_single_path", host, host.attach(export, multipath=False))
        assert not device.multipath and device.path.startswith("/dev/sd")
        assert len(device.paths) == 1 and len(probe.sessions()) == 1
        if policy == "strict":  # hostagent itself never asks for a map in this mode
            assert export.wwid not in probe.maps()
        else:  # multipathd takes any disk by itself; detach must still clean it up
            raw.wait_map(export.wwid, 1)
        asyncio.run(host.detach(export, device))
        assert_nothing_of(export)
    finally:
        guest_mod.set_find_multipaths("no")


def test_four_attaches_to_four_targets_at_once(array: IscsiArray, host: EngineHost) -> None:
    exports = [array.export_datera() for _ in range(4)]

    async def all_four() -> list[Device]:
        return list(await asyncio.gather(*(host.attach(e) for e in exports)))

    devices = timed("attach_4_parallel", host, all_four())
    for e, d in zip(exports, devices, strict=True):
        raw.assert_map(d, e.wwid, 2)

    async def detach_all() -> None:
        await asyncio.gather(*(host.detach(e, d) for e, d in zip(exports, devices, strict=True)))

    timed("detach_4_parallel", host, detach_all())
    for e in exports:
        assert_nothing_of(e)


def _ro(name: str) -> str:
    return Path(f"/sys/block/{name}/ro").read_text().strip()


def test_access_mode_ro_gives_a_read_only_map_that_a_reload_keeps(
        array: IscsiArray, host: EngineHost) -> None:
    export = array.export_datera()
    data = os.urandom(MIB)
    device = asyncio.run(host.attach(export))  # written while still read-write
    fd = os.open(device.path, os.O_WRONLY | os.O_SYNC)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
    asyncio.run(host.detach(export, device))
    export.connection_info["data"]["access_mode"] = "ro"
    device = timed("attach_read_only", host, host.attach(export))
    raw.assert_map(device, export.wwid, 2)
    dm = device.path[5:]
    assert device.read_only
    assert [_ro(n) for n in (dm, *(p.device for p in device.paths))] == ["1"] * 3
    run(["multipathd", "reconfigure"])  # multipathd reloads every map's table
    raw.wait_map(export.wwid, 2)
    assert _ro(dm) == "1", "a table reload made the map writable again"
    fd = os.open(device.path, os.O_RDWR)
    try:
        with pytest.raises(OSError) as err:
            os.pwrite(fd, b"\0" * 4096, 0)
        assert err.value.errno == errno.EPERM
        assert os.pread(fd, MIB, 0) == data
    finally:
        os.close(fd)
    asyncio.run(host.detach(export, device))
    assert_nothing_of(export)


def test_a_lone_portal_is_completed_by_sendtargets(array: IscsiArray, host: EngineHost) -> None:
    export = array.export_datera(multipath=False)  # target_portal alone, not discovered
    assert "target_portals" not in export.connection_info["data"]
    device = timed("attach_discovered", host, host.attach(export))
    raw.assert_map(device, export.wwid, 2)
    assert device.discovered_from == str(parse(export.connection_info).targets[0].portal)
    asyncio.run(host.detach(export, device))
    assert_nothing_of(export)
