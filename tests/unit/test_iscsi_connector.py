"""The iSCSI connector on the fake host: which commands run, what is left behind."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent.connectors.devices import ADD_PATH_PAUSES
from hostagent.errors import (
    AuthenticationFailed,
    DeviceBusy,
    HostCommandError,
    InvalidRequest,
    WwnMismatch,
)
from hostagent.host import scsi
from hostagent.host.iscsiadm import IscsiErr
from hostagent.models import FcVolume
from tests.unit.iscsihost import CHAP, IQN, K2, P1, P2, WWID, Host, datera, k2


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path)
    yield h
    h.executor.assert_done()  # every test: no scripted command left unrun, none unexpected


def test_attach_from_nothing_runs_four_processes_and_keeps_secrets_off_argv(host: Host) -> None:
    host.kernel.luns[(IQN, 0)] = WWID
    for p in (P1, P2):
        host.expect_new_node(IQN, p)
        host.expect_login(IQN, p)
    device = host.attach(datera(CHAP))
    host.executor.assert_done()
    assert len(host.executor.calls) == 4
    assert device.path == "/dev/dm-0" and device.wwn == WWID and device.multipath
    assert sorted(p.portal for p in device.paths) == sorted([P1, P2])
    assert device.missing == ()
    assert all(CHAP.password not in " ".join(c.argv) for c in host.executor.calls)
    record = host.record(IQN, P1).read_text()
    assert "node.session.auth.password = chap-secret-1" in record
    assert "node.session.scan = manual" in record
    assert sorted(host.mpd.commands) == ["add path sda", "add path sdb"]
    assert f"/{WWID}/" in host.kernel.p("/etc/multipath/wwids").read_text()


def test_the_iface_is_created_once(host: Host) -> None:
    host.kernel.p("/etc/iscsi/ifaces/hostagent").unlink()
    host.kernel.luns[(IQN, 0)] = WWID
    host.executor.expect(["iscsiadm", "-m", "iface", "-I", "hostagent", "-o", "new"],
                         side_effect=lambda: host.kernel.write("/etc/iscsi/ifaces/hostagent"))
    for p in (P1, P2):
        host.expect_new_node(IQN, p)
        host.expect_login(IQN, p)
    host.attach(datera())
    host.executor.assert_done()


def test_the_answer_gives_a_name_no_other_device_can_get(host: Host) -> None:
    host.kernel.luns[(IQN, 0)] = WWID
    host.expect_attach(IQN)
    device = host.attach(datera())
    assert device.stable_path == f"/dev/disk/by-id/dm-uuid-mpath-{WWID}"
    assert f"{device.stable_path} -> dm-0" in host.connector.devices.udev.waits  # type: ignore[attr-defined]
    assert host.fs.realpath(device.stable_path) == device.path


def test_a_single_path_device_gets_its_by_id_name(host: Host) -> None:
    host.kernel.luns[(IQN, 0)] = WWID
    host.expect_new_node(IQN, P1)
    host.expect_login(IQN, P1)
    device = host.attach(datera(), multipath=False)
    assert device.stable_path == f"/dev/disk/by-id/scsi-{WWID}"
    assert host.fs.realpath(device.stable_path) == device.path


def test_a_dead_portal_gives_a_one_path_device_naming_it(host: Host) -> None:
    host.kernel.luns[(IQN, 0)] = WWID
    host.expect_new_node(IQN, P1)
    host.expect_login(IQN, P1)
    host.expect_new_node(IQN, P2)
    host.expect_login(IQN, P2, returncode=8)
    device = host.attach(datera())
    assert len(device.paths) == 1 and device.paths[0].portal == P1
    assert len(device.missing) == 1 and device.missing[0].startswith(P2)
    assert "portal_unreachable" in device.missing[0]


def test_wrong_chap_fails_and_deletes_the_records_it_made(host: Host) -> None:
    for p in (P1, P2):
        host.expect_new_node(IQN, p)
        host.expect_login(IQN, p, returncode=24)
    with pytest.raises(AuthenticationFailed):
        host.attach(datera(CHAP))
    host.executor.assert_done()
    assert not host.kernel.p(f"/etc/iscsi/nodes/{IQN}").exists() or not any(
        host.kernel.p(f"/etc/iscsi/nodes/{IQN}").iterdir())


def test_an_unexpected_wwn_is_never_returned_and_nothing_stays(host: Host) -> None:
    host.kernel.luns[(IQN, 0)] = WWID
    for p in (P1, P2):
        host.expect_new_node(IQN, p)
        host.expect_login(IQN, p)
    host.expect_logout(IQN)
    with pytest.raises(WwnMismatch):
        host.attach(datera(expected="36001405ffffffffffffffffffffffff"))
    host.executor.assert_done()
    assert list(host.kernel.p("/sys/class/scsi_device").iterdir()) == []
    assert host.mpd.commands == []


def test_k2_detach_keeps_sessions_other_luns_use(host: Host) -> None:
    host.kernel.luns[(K2, 1)] = WWID
    host.kernel.luns[(K2, 2)] = WWID[:-1] + "9"
    for p in (P1, P2):
        host.expect_new_node(K2, p)
        host.expect_login(K2, p)
    first = host.attach(k2(1))
    second = host.attach(k2(2))  # sessions exist: no process at all
    assert len(host.executor.calls) == 4
    asyncio.run(host.connector.detach(k2(1), first))
    assert len(host.executor.calls) == 4  # LUN 2 still uses both sessions
    assert host.kernel.dm_of(WWID) is None and host.kernel.dm_of(second.wwn) is not None
    host.expect_logout(K2)
    asyncio.run(host.connector.detach(k2(2), second))
    host.executor.assert_done()
    assert list(host.kernel.p("/sys/class/scsi_device").iterdir()) == []
    assert f"/{WWID}/" not in host.kernel.p("/etc/multipath/wwids").read_text()
    assert host.kernel.flushed == ["/dev/dm-0", "/dev/dm-1"]


def test_detach_logs_out_a_target_in_one_process_and_removes_only_our_records(
        host: Host) -> None:
    host.kernel.luns[(IQN, 0)] = WWID
    for p in (P1, P2):
        host.expect_new_node(IQN, p)
        host.expect_login(IQN, p)
    device = host.attach(datera())
    nodes = host.kernel.p(f"/etc/iscsi/nodes/{IQN}")
    theirs = nodes / "192.0.2.9,3260,1" / "default"  # another tool's, discovered
    theirs.parent.mkdir()
    theirs.write_text("iface.iscsi_ifacename = default\n")
    host.expect_logout(IQN)
    asyncio.run(host.connector.detach(datera(), device))
    host.executor.assert_done()
    assert len(host.executor.calls) == 5  # 4 to attach, 1 to detach
    assert [e.name for e in nodes.iterdir()] == ["192.0.2.9,3260,1"] and theirs.exists()
    assert host.kernel.session_host(IQN, P1) is None and host.kernel.session_host(IQN, P2) is None


def test_a_target_with_a_lun_left_on_one_portal_loses_only_its_idle_portal(
        host: Host) -> None:
    host.kernel.luns[(K2, 1)] = WWID
    for p in (P1, P2):
        host.expect_new_node(K2, p)
        host.expect_login(K2, p)
    device = host.attach(k2(1))
    p1_host = host.kernel.session_host(K2, P1)
    assert p1_host is not None
    host.kernel.add_disk(p1_host, 2, WWID[:-1] + "9")  # another LUN, on one path only
    host.expect_logout(K2, P2)
    asyncio.run(host.connector.detach(k2(1), device))
    host.executor.assert_done()
    assert host.kernel.session_host(K2, P1) == p1_host
    assert host.kernel.session_host(K2, P2) is None
    assert host.record(K2, P1).exists() and not host.record(K2, P2).exists()


def test_a_stale_disk_at_the_same_lun_is_replaced(host: Host) -> None:
    host.kernel.luns[(K2, 1)] = WWID
    for p in (P1, P2):
        host.expect_new_node(K2, p)
        host.expect_login(K2, p)
    asyncio.run(host.connector.attach(k2(1), multipath=True))
    # Behind our back: the map goes, the disks stay, the array reuses LUN 1.
    host.kernel.remove_map(WWID)
    new = WWID[:-1] + "7"
    host.kernel.luns[(K2, 1)] = new
    device = host.attach(k2(1))
    assert device.wwn == new
    assert all(host.fs.read(f"/sys/class/scsi_device/{p.hctl}/device/wwid") == "naa." + new[1:]
               for p in device.paths)


def _k2_lun1_then_reused(host: Host) -> str:
    host.kernel.luns[(K2, 1)] = WWID
    for p in (P1, P2):
        host.expect_new_node(K2, p)
        host.expect_login(K2, p)
    host.attach(k2(1))
    new = WWID[:-1] + "5"
    host.kernel.luns[(K2, 1)] = new  # the array gives LUN 1 to another volume
    return new


def test_a_map_whose_lun_changed_identity_is_removed_not_reused(host: Host) -> None:
    new = _k2_lun1_then_reused(host)
    device = host.attach(k2(1))
    assert device.wwn == new and host.kernel.dm_of(WWID) is None
    assert f"del map {WWID}" in host.mpd.commands


def test_a_stale_map_that_is_open_is_refused(host: Host) -> None:
    _k2_lun1_then_reused(host)
    host.mpd.busy.add(WWID)
    with pytest.raises(DeviceBusy) as err:
        host.attach(k2(1))
    assert err.value.details["stale_map"] == WWID
    assert host.kernel.dm_of(WWID) is not None  # never touched


def test_a_disk_another_dm_target_holds_is_refused_untouched(host: Host) -> None:
    _k2_lun1_then_reused(host)
    dm = host.kernel.dm_of(WWID)
    host.kernel.write(f"/sys/block/{dm}/dm/uuid", "LVM-3Xc9fZ")  # LVM on the raw disks
    with pytest.raises(DeviceBusy) as err:
        host.attach(k2(1))
    assert err.value.details["holder"] == dm and "not a multipath map" in err.value.message
    assert not [c for c in host.mpd.commands if c.startswith("del map")]
    assert (host.kernel.p("/sys/block") / dm).exists()


def test_a_disk_multipathd_refuses_at_first_is_offered_again(host: Host) -> None:
    host.kernel.luns[(IQN, 0)] = WWID
    host.expect_attach(IQN)
    host.mpd.add_refusals["sdb"] = 2  # its view of the name still that of a reused LUN's disk
    device = host.attach(datera())
    assert sorted(p.device for p in device.paths) == ["sda", "sdb"]
    assert sorted(host.mpd.commands) == ["add path sda", *["add path sdb"] * 3]
    assert sorted(p.name for p in host.kernel.p(f"/sys/block/{device.path[5:]}/slaves").iterdir()) \
        == ["sda", "sdb"]


def test_a_disk_multipathd_keeps_refusing_fails_the_attach_and_is_rolled_back(
        host: Host) -> None:
    host.kernel.luns[(IQN, 0)] = WWID
    host.expect_attach(IQN)
    host.expect_logout(IQN)
    host.mpd.add_refusals["sdb"] = len(ADD_PATH_PAUSES) + 1
    with pytest.raises(HostCommandError) as err:
        host.attach(datera())
    assert err.value.details == {"command": "add path sdb", "reply": "fail"}
    assert f"refused sdb as a path of {WWID} 5 times in 7.5 s" in err.value.message
    assert host.mpd.commands.count("add path sdb") == len(ADD_PATH_PAUSES) + 1
    assert host.kernel.dm_of(WWID) is None  # sda's map taken away, then both disks
    assert list(host.kernel.p("/sys/class/scsi_device").iterdir()) == []


def test_bad_input_runs_nothing(host: Host) -> None:
    with pytest.raises(InvalidRequest) as err:
        asyncio.run(host.connector.attach(FcVolume(("2000020000000b01",), 1), multipath=True))
    assert err.value.field == "connection_info.driver_volume_type"
    assert host.executor.calls == []


def test_connector_properties_like_os_brick(host: Host) -> None:
    host.kernel.write("/etc/iscsi/initiatorname.iscsi",
                      "## comment\nInitiatorName=iqn.1993-08.org.debian:01:abc\n")
    props = host.connector.connector_properties(multipath=True)
    assert props["initiator"] == "iqn.1993-08.org.debian:01:abc"
    assert props["multipath"] is True and props["os_type"] == "linux"
    assert {"ip", "host", "platform"} <= set(props)


def test_sessions_of_one_target_are_read_without_the_others_attributes(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    host.kernel.add_session(IQN, P1)
    host.kernel.add_session(K2, P1)
    host.kernel.add_session(K2, P2)
    assert sorted(str(s.portal) for s in scsi.iscsi_sessions(host.fs, K2)) == sorted([P1, P2])
    assert [s.iqn for s in scsi.iscsi_sessions(host.fs, IQN)] == [IQN]
    assert len(scsi.iscsi_sessions(host.fs)) == 3
    reads = []
    real_read = host.fs.try_read

    def counted(path: str) -> str | None:
        reads.append(path)
        return real_read(path)
    monkeypatch.setattr(host.fs, "try_read", counted)
    scsi.iscsi_sessions(host.fs, IQN)
    assert sum("connection" in r for r in reads) == 2  # address and port of IQN's only


def test_a_logout_refused_by_a_session_in_recovery_is_tried_again(host: Host) -> None:
    host.kernel.luns[(IQN, 0)] = WWID
    host.expect_attach(IQN)
    device = host.attach(datera())
    logout = ["iscsiadm", "-m", "node", "-T", IQN, "-I", "hostagent", "--logout"]
    # iscsid was restarted: P2's session is in recovery and refuses; P1's goes, and
    # iscsiadm sums it up as "session not found" (2), as seen in the guest.
    host.executor.expect(logout, returncode=IscsiErr.SESS_NOT_FOUND,
                         stderr="iscsiadm: initiator reported error (32 - target likely "
                                "not connected)",
                         side_effect=lambda: host.kernel.remove_session(IQN, P1))
    host.executor.expect(logout, side_effect=lambda: host.kernel.remove_session(IQN, P2))
    asyncio.run(host.connector.detach(datera(), device))
    assert host.kernel.session_host(IQN, P2) is None
    assert not host.record(IQN, P1).exists() and not host.record(IQN, P2).exists()


def test_an_attach_or_detach_among_many_maps_reads_only_its_own(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cost growth (issue 17): the map is found through its disks' holders, not by
    reading every map's uuid at each udev event."""
    wwids = [WWID[:-2] + f"{i:02x}" for i in range(1, 7)]
    for lun, wwid in enumerate(wwids, start=1):
        host.kernel.luns[(K2, lun)] = wwid
    for p in (P1, P2):
        host.expect_new_node(K2, p)
        host.expect_login(K2, p)
    devices = [host.attach(k2(lun)) for lun in range(1, 6)]
    uuids: list[str] = []
    real = host.fs.try_read

    def counted(path: str) -> str | None:
        if path.endswith("/dm/uuid"):
            uuids.append(path)
        return real(path)
    monkeypatch.setattr(host.fs, "try_read", counted)
    sixth = host.attach(k2(6))
    asyncio.run(host.connector.detach(k2(3), devices[2]))
    mine = {f"/sys/block/{dm}/dm/uuid" for dm in (sixth.path[5:], devices[2].path[5:])}
    assert set(uuids) <= mine, uuids  # none of the other four maps was read
    assert sixth.wwn == wwids[5] and host.kernel.dm_of(wwids[2]) is None


def test_a_disk_name_another_map_holds_now_falls_back_to_every_map(host: Host) -> None:
    host.kernel.luns[(K2, 1)] = WWID
    host.kernel.luns[(K2, 2)] = other = WWID[:-1] + "9"
    for p in (P1, P2):
        host.expect_new_node(K2, p)
        host.expect_login(K2, p)
    first = host.attach(k2(1))
    second = host.attach(k2(2))
    theirs = [p.device for p in second.paths]  # as if first's record named these disks
    assert host.connector.devices.multipath.map_device(WWID, theirs) == first.path[5:]
    assert host.connector.devices.multipath.map_holding(WWID, theirs) is None
    assert host.connector.devices.multipath.map_holding(other, theirs) == second.path[5:]
