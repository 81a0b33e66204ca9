"""What the controller asks of a volume beyond its targets (models.Access) and how a
lone portal is completed: enforce_multipath refuses before the host is touched,
access_mode ro leaves read-only devices, encrypted is reported, SendTargets runs
for a multipath attach given one portal, whatever target_discovered says."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hostagent.connection_info import parse
from hostagent.connectors.base import PathRepair, RepairKind
from hostagent.connectors.iscsi import IscsiConnector, IscsiOptions
from hostagent.errors import HostCommandError, MultipathRequired
from hostagent.models import Access, IscsiTarget, IscsiVolume, Portal
from tests.unit.fakehost import FakeUdev, drop_from_map
from tests.unit.iscsihost import IQN, K2, P1, P2, WWID, Host, datera

DEFAULT_REDISCOVER = IscsiOptions().rediscover_after

ENFORCED = Access(enforce_multipath=True)
READ_ONLY = Access(read_only=True)
SENDTARGETS = ["iscsiadm", "-m", "discovery", "-t", "st", "-p", P1, "-I", "hostagent",
               "-o", "nonpersistent"]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path)
    h.kernel.luns[(IQN, 0)] = WWID
    yield h
    h.executor.assert_done()


def ro_flag(host: Host, name: str) -> str | None:
    return host.fs.try_read(f"/sys/block/{name}/ro")


def test_enforced_multipath_on_a_single_path_attach_is_refused_running_nothing(
        host: Host) -> None:
    with pytest.raises(MultipathRequired) as err:
        host.attach(replace(datera(), access=ENFORCED), multipath=False)
    assert err.value.details["reason"] == "single_path"
    assert "options.multipath" in err.value.message
    assert host.executor.calls == [] and host.mpd.commands == []


def test_enforced_multipath_without_multipathd_is_refused_running_nothing(host: Host) -> None:
    host.mpd.running = False
    with pytest.raises(MultipathRequired) as err:
        host.attach(replace(datera(), access=ENFORCED))
    assert err.value.details["reason"] == "multipathd_unavailable"
    assert "Connection refused" in err.value.message
    assert host.executor.calls == []
    assert not host.kernel.p("/etc/iscsi/nodes").exists()


def test_enforced_multipath_with_multipathd_attaches(host: Host) -> None:
    host.expect_attach(IQN)
    device = host.attach(replace(datera(), access=ENFORCED))
    assert device.multipath and host.mpd.commands[0] == "show status"


def test_without_enforcement_multipathd_is_not_asked_first(host: Host) -> None:
    host.expect_attach(IQN)
    host.attach(datera())
    assert "show status" not in host.mpd.commands


def test_read_only_sets_the_map_and_every_disk_read_only(host: Host) -> None:
    host.expect_attach(IQN)
    device = host.attach(replace(datera(), access=READ_ONLY))
    assert device.read_only and device.path == "/dev/dm-0"
    assert [ro_flag(host, n) for n in ("dm-0", "sda", "sdb")] == ["1", "1", "1"]


def test_read_only_single_path_sets_its_one_disk(host: Host) -> None:
    host.expect_new_node(IQN, P1)
    host.expect_login(IQN, P1)
    device = host.attach(replace(datera(), access=READ_ONLY), multipath=False)
    assert device.read_only and device.path == "/dev/sda" and ro_flag(host, "sda") == "1"


def test_a_read_write_volume_is_left_writable(host: Host) -> None:
    host.expect_attach(IQN)
    device = host.attach(datera())
    assert not device.read_only
    assert all(ro_flag(host, n) != "1" for n in ("dm-0", "sda", "sdb"))


def test_a_device_that_does_not_take_read_only_fails_the_attach_and_is_undone(
        host: Host) -> None:
    host.fs.set_read_only = lambda dev_path: None  # type: ignore[method-assign]
    host.expect_attach(IQN)
    host.expect_logout(IQN)
    with pytest.raises(HostCommandError, match="did not become read-only"):
        host.attach(replace(datera(), access=READ_ONLY))
    assert host.kernel.dm_of(WWID) is None and not host.kernel.p("/dev/sda").exists()


def test_a_path_healed_into_a_read_only_map_is_read_only_too(host: Host) -> None:
    host.expect_attach(IQN)
    vol = replace(datera(), access=READ_ONLY)
    device = host.attach(vol)
    path = next(p for p in device.paths if p.portal == P2)
    drop_from_map(host.kernel, path.device)
    host.kernel.delete_disk(path.hctl)
    hctl = path.hctl
    repaired = asyncio.run(host.connector.repair(vol, device, PathRepair(
        RepairKind.SCAN, P2, IQN, hctl, None)))
    assert ro_flag(host, repaired.device) == "1"


def test_encrypted_is_reported_on_the_device(host: Host) -> None:
    host.expect_attach(IQN)
    assert host.attach(replace(datera(), access=Access(encrypted=True))).encrypted


def test_a_lone_portal_is_completed_by_sendtargets_and_the_answer_says_so(
        host: Host) -> None:
    lone = parse({"driver_volume_type": "iscsi", "data": {
        "target_portal": P1, "target_iqn": IQN, "target_lun": 0,
        "target_discovered": False}})
    stdout = f"{P1},1 {IQN}\n{P2},1 {IQN}\n"
    host.executor.expect(SENDTARGETS, stdout=stdout)
    host.expect_attach(IQN)
    device = host.attach(lone)
    assert device.discovered_from == P1
    assert sorted(p.portal for p in device.paths) == sorted([P1, P2])


def test_a_lone_portal_single_path_attach_asks_no_sendtargets(host: Host) -> None:
    lone = IscsiVolume((IscsiTarget(Portal.parse(P1), IQN, 0),), discover=True)
    host.expect_new_node(IQN, P1)
    host.expect_login(IQN, P1)
    device = host.attach(lone, multipath=False)
    assert device.discovered_from is None


# ---- a SendTargets answer serves the target's further LUNs for a while --------------

K2_WWIDS = {lun: f"36001405{lun:025x}" for lun in (1, 2)}


def k2_lone(lun: int) -> IscsiVolume:
    return IscsiVolume((IscsiTarget(Portal.parse(P1), K2, lun),), discover=True)


@pytest.fixture
def k2_host(host: Host) -> Host:
    for lun, wwid in K2_WWIDS.items():
        host.kernel.luns[(K2, lun)] = wwid
    host.executor.expect(SENDTARGETS, stdout=f"{P1},1 {K2}\n{P2},1 {K2}\n")
    host.expect_attach(K2)
    host.attach(k2_lone(1))
    return host


def test_a_further_lun_on_live_sessions_reuses_the_answer_and_runs_nothing(
        k2_host: Host) -> None:
    calls = len(k2_host.executor.calls)
    listings: list[str] = []
    listdir = k2_host.fs.listdir

    def counted(host_path: str) -> list[str]:
        listings.append(host_path)
        return listdir(host_path)
    k2_host.fs.listdir = counted  # type: ignore[method-assign]
    k2_host.clock.advance(DEFAULT_REDISCOVER - 1)
    device = k2_host.attach(k2_lone(2))
    assert len(k2_host.executor.calls) == calls  # no SendTargets, no login
    # Every session is read twice: for the answer's portals, then under the lock for
    # both paths (not once per path).
    assert listings.count("/sys/class/iscsi_session") == 2, listings
    assert device.discovered_from == P1 and device.wwn == K2_WWIDS[2]
    assert sorted(p.portal for p in device.paths) == sorted([P1, P2])


def test_an_answer_older_than_rediscover_after_is_asked_again(k2_host: Host) -> None:
    k2_host.clock.advance(DEFAULT_REDISCOVER)
    k2_host.executor.expect(SENDTARGETS, stdout=f"{P1},1 {K2}\n{P2},1 {K2}\n")
    assert len(k2_host.attach(k2_lone(2)).paths) == 2


def test_a_listed_portal_without_a_working_session_of_ours_asks_again(k2_host: Host) -> None:
    host = k2_host.kernel.session_host(K2, P2)
    k2_host.kernel.write(f"/sys/devices/platform/host{host}/session{host}/iscsi_session/"
                         f"session{host}/state", "FAILED")
    # The array now lists one more portal: the new answer, not the old, is used.
    p3 = "10.99.0.3:3260"
    k2_host.executor.expect(SENDTARGETS, stdout=f"{P1},1 {K2}\n{P2},1 {K2}\n{p3},1 {K2}\n")
    k2_host.expect_new_node(K2, p3)
    k2_host.expect_login(K2, p3)
    device = k2_host.attach(k2_lone(2))
    assert {p.portal for p in device.paths} >= {P1, p3}
    assert {str(t.portal) for t in device.iscsi_targets} == {P1, P2, p3}


def test_rediscover_after_zero_asks_every_time(host: Host) -> None:
    host.connector = IscsiConnector(host.executor, host.fs, FakeUdev(host.kernel), host.mpd,
                                    clock=host.clock,
                                    options=IscsiOptions(rediscover_after=0))
    for lun, wwid in K2_WWIDS.items():
        host.kernel.luns[(K2, lun)] = wwid
    host.executor.expect(SENDTARGETS, stdout=f"{P1},1 {K2}\n{P2},1 {K2}\n", times=2)
    host.expect_attach(K2)
    host.attach(k2_lone(1))
    host.attach(k2_lone(2))
