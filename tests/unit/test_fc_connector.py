"""The FC connector on the fake host: which sysfs writes it makes, what it leaves behind.

The fake kernel lays out fc_host, fc_remote_ports and the SCSI targets below the
remote ports as software FCoE did in the guest, and scans the way fc_user_scan
does: only online FCP target ports with a SCSI target id, exactly the LUN asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from hostagent.agent.service import AttachRequest, Service
from hostagent.agent.state import Store
from hostagent.connection_info import FIBRE_CHANNEL, parse
from hostagent.connectors.fc import FcOptions
from hostagent.errors import (
    DeviceBusy,
    InvalidRequest,
    LunNotFound,
    NoPath,
    PathsDown,
    WwnMismatch,
)
from hostagent.host import fc
from hostagent.models import IscsiTarget, IscsiVolume, Portal, Status
from tests.unit.fakehost import FakeUdev
from tests.unit.fchost import I1, I2, I3, OTHER, T1, T2, T3, WWID, Host, k2

T = TypeVar("T")
SCAN = "/sys/class/scsi_host/host{}/scan"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path)
    yield h
    h.executor.assert_done()  # every test: no scripted command left unrun, none unexpected


def two_links(host: Host, lun: int = 1) -> None:
    """The guest's fabric: each HBA sees one array port (target id 0 on each)."""
    host.hba(I1, T1)
    host.hba(I2, T2)
    host.export(lun)


def test_one_lun_over_two_hbas_is_one_map_with_exactly_two_scans(host: Host) -> None:
    two_links(host)  # the K2 maps both initiators to both targets: no path is missing
    device = host.attach(k2(1))
    assert host.fs.writes == [(SCAN.format(3), "0 0 1"), (SCAN.format(4), "0 0 1")]
    assert device.path == "/dev/dm-0" and device.multipath and device.wwn == WWID
    assert [(p.hctl, p.target) for p in device.paths] == [("3:0:0:1", T1), ("4:0:0:1", T2)]
    assert device.missing == ()
    assert sorted(host.mpd.commands) == ["add path sda", "add path sdb"]
    assert f"/{WWID}/" in host.kernel.p("/etc/multipath/wwids").read_text()
    assert host.executor.calls == []  # no host process at all
    assert all("/dev/disk/by-path" not in w for w in host.udev.waits)


def test_several_hbas_one_offline(host: Host) -> None:
    host.hba(I1, T1, T2)
    host.hba(I2, state="Linkdown")
    host.hba(I3, T1, T2)
    host.export(1)
    device = host.attach(k2(1, itmap={}))
    # Target ids follow the order the ports were seen: T1 is 0, T2 is 1 on each HBA.
    assert host.scans() == [(SCAN.format(3), "0 0 1"), (SCAN.format(3), "0 1 1"),
                            (SCAN.format(5), "0 0 1"), (SCAN.format(5), "0 1 1")]
    assert len(device.paths) == 4
    assert device.missing == (f"{I2} (host4): port Linkdown",)


def test_targets_seen_on_some_hbas_only(host: Host) -> None:
    # Two fabrics: each target is zoned to one HBA. Without a map that is normal;
    # only a target no online HBA sees is missing.
    host.hba(I1, T1)
    host.hba(I2, T2)
    host.export(1)
    device = host.attach(k2(1, itmap={}, targets=(T1, T2, T3)))
    assert host.scans() == [(SCAN.format(3), "0 0 1"), (SCAN.format(4), "0 0 1")]
    assert len(device.paths) == 2
    assert device.missing == (f"{T3}: seen by no online HBA",)


def test_initiator_target_map_restricts_hbas_and_targets(host: Host) -> None:
    for wwpn in (I1, I2, I3):
        host.hba(wwpn, T1, T2)
    host.export(1)
    device = host.attach(k2(1, itmap={I1: (T1,), I2: (T2,)}))
    # I3 is not in the map: its scan file is never written. I2 goes to T2 only.
    assert host.fs.writes == [(SCAN.format(3), "0 0 1"), (SCAN.format(4), "0 1 1")]
    assert [(p.hctl, p.target) for p in device.paths] == [("3:0:0:1", T1), ("4:0:1:1", T2)]
    assert device.missing == ()


def test_map_entries_that_reach_nothing_are_named(host: Host) -> None:
    host.hba(I1, T1)
    host.export(1)
    device = host.attach(k2(1, itmap={I1: (T1, T2), "20000200000000ff": (T1,)}))
    assert len(device.paths) == 1
    assert device.missing == ("20000200000000ff: no such HBA on this host",
                              f"{T2}: seen by no online HBA")


@pytest.mark.parametrize(("lun", "mode", "kernel_lun"), [
    (300, None, 300), (300, "transparent", 300), (256, "SAM2", 16640),
    (300, "SAM2", 16684), (7, "SAM2", 7), (7, "SAM3-flat", 16391),
])
def test_lun_ids_above_255(host: Host, lun: int, mode: str | None, kernel_lun: int) -> None:
    two_links(host, kernel_lun)
    device = host.attach(k2(lun, addressing_mode=mode))
    assert host.scans() == [(SCAN.format(3), f"0 0 {kernel_lun}"),
                            (SCAN.format(4), f"0 0 {kernel_lun}")]
    assert [p.hctl for p in device.paths] == [f"3:0:0:{kernel_lun}", f"4:0:0:{kernel_lun}"]
    host.detach(k2(lun, addressing_mode=mode), device)
    assert host.scsi_devices() == []


def test_kernel_lun_is_os_bricks_addressing() -> None:
    assert fc.kernel_lun(255, "SAM2") == 255
    assert fc.kernel_lun(16383, "SAM2") == 16383 + 0x4000
    assert fc.kernel_lun(0, "SAM3-flat") == 0x4000
    assert fc.kernel_lun(5000, "SAM") == 5000


def test_ports_that_cannot_carry_a_path(host: Host) -> None:
    h1 = host.hba(I1, T1)
    h2 = host.kernel.add_fc_host(I2)
    host.kernel.add_rport(h2, T2, state="Blocked")
    h3 = host.kernel.add_fc_host(I3)
    host.kernel.add_rport(h3, T1, roles="FCP Initiator")  # not a target: not seen as one
    host.kernel.add_rport(h3, T2, target_id=-1)  # a target without a SCSI target id
    host.export(1)
    device = host.attach(k2(1, itmap={I1: (T1,), I2: (T2,), I3: (T1, T2)}))
    assert host.scans() == [(SCAN.format(h1), "0 0 1")]
    assert device.missing == (
        f"{I2} -> {T2}: remote port rport-{h2}:0-0 Blocked",
        f"{I3} -> {T2}: remote port rport-{h3}:0-1 has no SCSI target id",
    )


def test_no_online_hba_is_no_path_and_touches_nothing(host: Host) -> None:
    host.hba(I1, state="Linkdown")
    host.hba(I2, state="Offline")
    with pytest.raises(NoPath) as err:
        host.attach(k2(1))
    assert err.value.details["missing"] == [f"{I1} (host3): port Linkdown",
                                            f"{I2} (host4): port Offline"]
    assert host.fs.writes == []


def test_a_lun_missing_behind_one_target_gives_one_path(host: Host) -> None:
    host.hba(I1, T1)
    host.hba(I2, T2)
    host.export(1, targets=(T1,))
    device = host.attach(k2(1))
    assert [p.target for p in device.paths] == [T1]
    assert len(device.missing) == 1
    assert device.missing[0].startswith(f"{I2} -> {T2}: lun_not_found")


def test_a_lun_missing_everywhere_fails_alike_and_leaves_nothing(host: Host) -> None:
    two_links(host, lun=1)
    with pytest.raises(LunNotFound):
        host.attach(k2(2))
    assert host.scsi_devices() == [] and host.mpd.commands == []


def test_paths_that_disagree_on_the_wwid_are_all_undone(host: Host) -> None:
    host.hba(I1, T1)
    host.hba(I2, T2)
    host.kernel.fc_luns[(T1, 1)] = WWID
    host.kernel.fc_luns[(T2, 1)] = OTHER
    with pytest.raises(WwnMismatch):
        host.attach(k2(1))
    assert host.scsi_devices() == [] and host.mpd.commands == []
    deletes = [w for w in host.fs.writes if w[0].endswith("/delete")]
    assert deletes == [("/sys/class/scsi_device/3:0:0:1/device/delete", "1"),
                       ("/sys/class/scsi_device/4:0:0:1/device/delete", "1")]


def test_an_unexpected_wwn_is_never_returned(host: Host) -> None:
    two_links(host)
    with pytest.raises(WwnMismatch):
        host.attach(k2(1, expected_wwn="36001405ffffffffffffffffffffffff"))
    assert host.scsi_devices() == []


def test_single_path_mode_scans_one_pair(host: Host) -> None:
    two_links(host)
    device = host.attach(k2(1), multipath=False)
    assert host.scans() == [(SCAN.format(3), "0 0 1")]
    assert device.path == "/dev/sda" and not device.multipath
    assert host.mpd.commands == []


def test_detach_flushes_removes_the_map_deletes_the_disks_and_forgets(host: Host) -> None:
    two_links(host)
    device = host.attach(k2(1))
    host.fs.writes.clear()
    host.detach(k2(1), device)
    assert host.kernel.flushed == ["/dev/dm-0"]
    assert host.mpd.commands[-1:] == [f"del map {WWID}"]  # queueing left as it was
    assert host.fs.writes == [("/sys/class/scsi_device/3:0:0:1/device/delete", "1"),
                              ("/sys/class/scsi_device/4:0:0:1/device/delete", "1")]
    assert host.scsi_devices() == [] and host.kernel.dm_of(WWID) is None
    assert f"/{WWID}/" not in host.kernel.p("/etc/multipath/wwids").read_text()
    assert host.connector.current(device) is None


def test_detach_also_removes_a_path_that_came_back_after_the_attach(host: Host) -> None:
    host.hba(I1, T1)
    down = host.hba(I2, T2, state="Linkdown")
    host.export(1)
    device = host.attach(k2(1))
    assert len(device.paths) == 1
    # The link comes back: the kernel scans the returning port by itself and
    # multipathd adds the new disk to the map, whose WWID it knows.
    host.kernel.set_fc_host_state(down, "Online")
    host.kernel.fc_scan(down, 0, 0, 1)
    host.kernel.add_path_to_map("sdb")
    host.detach(k2(1), device)
    assert host.scsi_devices() == [] and host.kernel.dm_of(WWID) is None


def test_detach_leaves_other_luns_on_the_same_ports(host: Host) -> None:
    two_links(host)
    host.export(2, OTHER)
    first = host.attach(k2(1))
    second = host.attach(k2(2))
    host.detach(k2(1), first)
    assert host.scsi_devices() == ["3:0:0:2", "4:0:0:2"]
    assert host.connector.current(second) == second


def test_a_stale_disk_at_the_lun_is_deleted_then_scanned_anew(host: Host) -> None:
    two_links(host)
    host.kernel.fc_scan(3, 0, 0, 1)  # a leftover, in no map
    host.attach(k2(1))
    # The two links' paths run side by side (the writes off the loop): host3's own.
    mine = [w for w in host.fs.writes if "3:0:0:1" in w[0] or w[0] == SCAN.format(3)]
    assert mine[:2] == [("/sys/class/scsi_device/3:0:0:1/device/delete", "1"),
                        (SCAN.format(3), "0 0 1")]


def test_recover_takes_away_what_a_cut_off_attach_made(host: Host) -> None:
    two_links(host)
    host.export(2, OTHER)
    host.attach(k2(1))  # the agent died before it recorded the device
    other = host.attach(k2(2))
    asyncio.run(host.connector.recover(k2(1)))
    assert host.scsi_devices() == ["3:0:0:2", "4:0:0:2"]
    assert host.kernel.dm_of(WWID) is None and host.connector.current(other) == other
    assert f"/{WWID}/" not in host.kernel.p("/etc/multipath/wwids").read_text()


def test_recover_never_forces_an_open_map_away(tmp_path: Path) -> None:
    host = Host(tmp_path, FcOptions(remove_attempts=1))
    two_links(host)
    host.attach(k2(1))
    host.mpd.busy.add(WWID)
    with pytest.raises(DeviceBusy):
        asyncio.run(host.connector.recover(k2(1)))
    assert host.kernel.dm_of(WWID) is not None and len(host.scsi_devices()) == 2


class StuckUdev(FakeUdev):
    """The second wait never ends: the operation's timeout cancels the attach there."""

    async def wait(self, check: Callable[[], T | None], *, timeout: float, what: str) -> T:
        if len(self.waits) == 1:
            self.waits.append(what)
            await asyncio.Event().wait()
        return await super().wait(check, timeout=timeout, what=what)


def test_an_attach_cut_off_mid_scan_is_undone(host: Host) -> None:
    two_links(host)
    udev = StuckUdev()
    host.connector.devices.udev = udev

    async def scenario() -> None:
        task = asyncio.create_task(host.connector.attach(k2(1), multipath=True))
        while len(udev.waits) < 2:
            await asyncio.sleep(0)
        assert len(host.scsi_devices()) == 2  # both scanned, one disk still awaited
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert host.scsi_devices() == [] and host.kernel.dm_of(WWID) is None


def test_extend_rescans_every_path_then_resizes_the_map(host: Host) -> None:
    two_links(host)
    device = host.attach(k2(1))
    host.fs.writes.clear()
    asyncio.run(host.connector.extend(k2(1), device))
    assert host.fs.writes == [("/sys/class/scsi_device/3:0:0:1/device/rescan", "1"),
                              ("/sys/class/scsi_device/4:0:0:1/device/rescan", "1")]
    assert host.mpd.commands[-1] == f"resize map {WWID}"


def test_extend_refuses_while_a_link_is_down(host: Host) -> None:
    two_links(host)
    device = host.attach(k2(1))
    host.kernel.set_fc_host_state(4, "Linkdown")
    host.fs.writes.clear()
    with pytest.raises(PathsDown) as err:
        asyncio.run(host.connector.extend(k2(1), device))
    assert err.value.details["missing"] == [f"{I2} (host4): port Linkdown",
                                            f"{T2}: seen by no online HBA"]
    assert host.fs.writes == []


def test_the_lock_is_held_on_the_target_wwpns(host: Host) -> None:
    two_links(host)

    async def scenario() -> bool:
        async with host.connector.locks.hold([T2]):
            attach = asyncio.create_task(host.connector.attach(k2(1), multipath=True))
            await asyncio.sleep(0)
            waited = not attach.done() and host.fs.writes == []
        await attach
        return waited

    assert asyncio.run(scenario())


def test_connector_properties_list_online_ports_only(host: Host) -> None:
    host.hba(I1)
    host.hba(I2, state="Linkdown")
    props = host.connector.connector_properties(multipath=True)
    assert props["wwpns"] == [I1] and props["wwnns"] == ["1000" + I1[4:]]
    assert props["multipath"] is True and {"ip", "host", "platform", "os_type"} <= set(props)


def test_connector_properties_without_hbas(host: Host) -> None:
    props = host.connector.connector_properties(multipath=False)
    assert "wwpns" not in props and "wwnns" not in props


def test_an_iscsi_volume_is_refused_untouched(host: Host) -> None:
    vol = IscsiVolume((IscsiTarget(Portal("127.0.0.1"), "iqn.2001-05.com.x:y", 0),))
    with pytest.raises(InvalidRequest) as err:
        host.attach(vol)
    assert err.value.field == "connection_info.driver_volume_type"
    assert host.fs.writes == []


def test_the_agent_attaches_and_detaches_through_the_fc_engine(tmp_path: Path) -> None:
    host = Host(tmp_path / "host")
    two_links(host)
    store = Store(tmp_path / "state")
    service = Service(store, {FIBRE_CHANNEL: host.connector})
    info = {"driver_volume_type": "fibre_channel",
            "data": {"target_discovered": True, "target_lun": 1, "target_wwn": [T1, T2],
                     "initiator_target_map": {I1: [T1, T2], I2: [T1, T2]},
                     "volume_id": "vol-fc"}}
    spec = parse(info)

    async def scenario() -> None:
        att, created = await service.attach(
            AttachRequest("fc-1", info, spec, spec.volume_id, True, 60))
        assert created and att.status is Status.ATTACHED and att.protocol == FIBRE_CHANNEL
        assert att.device is not None and att.device.path == "/dev/dm-0"
        assert service.connector_properties()["wwpns"] == [I1, I2]
        assert (await service.detach("fc-1")).status is Status.DETACHED
        await service.close()

    try:
        asyncio.run(scenario())
    finally:
        store.close()
    assert host.scsi_devices() == [] and host.kernel.dm_of(WWID) is None
