"""Smoke tests of the test bed itself: the raw tools through its fixtures.

They prove that the array fixture's two personalities, CHAP, the faults, the FC
fabric and the leak check behave as a real SAN would, before hostagent relies
on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from tests.kernel import rawtools as raw
from tests.kernel.testbed import leaks, probe
from tests.kernel.testbed.faults import Faults
from tests.kernel.testbed.fcoe import FcArray, FcFabric, rport
from tests.kernel.testbed.lio import Chap, IscsiArray, VendorRefused
from tests.kernel.testbed.sh import run, wait_until, write

E = TypeVar("E")


def export_or_skip(make: Callable[[], E]) -> E:
    try:
        return make()
    except VendorRefused as err:
        pytest.skip(f"the kernel refused the array's T10 identity: {err}")


def attach_static(data: dict[str, Any], chap: Chap | None = None) -> None:
    for portal, iqn in zip(data["target_portals"], data["target_iqns"], strict=True):
        raw.new_node(iqn, portal, chap)
        raw.login(iqn, portal)


def detach(wwids: list[str], iqn: str) -> None:
    for wwid in wwids:
        raw.remove_map(wwid)
    raw.logout_all(iqn)
    wait_until(lambda: not any(raw.disks_with_wwid(w) for w in wwids), timeout=30,
               what="the disks to go with the sessions")


@pytest.mark.parametrize("array", [2, 3], indirect=True)
def test_datera_volume_gives_one_map_over_every_portal(array: IscsiArray) -> None:
    export = export_or_skip(array.export_datera)
    data = export.connection_info["data"]
    n = len(array.portals)
    assert data["target_discovered"] is False
    assert data["target_luns"] == [0] * n and data["target_iqns"] == [export.iqn] * n

    attach_static(data)
    disks = raw.wait_disks(export.wwid, n)
    assert {probe.vendor_model(sd) for sd in disks} == {("DATERA", "IBLOCK")}
    mp = raw.wait_map(export.wwid, n)
    assert mp.vendor_product.startswith("DATERA,IBLOCK")
    assert sorted(p.dev for p in mp.paths) == disks
    assert "DATERA,IBLOCK" in run(["multipath", "-ll", export.wwid]).stdout
    detach([export.wwid], export.iqn)


def test_k2_shared_iqn_three_luns_three_maps_two_sessions(array: IscsiArray) -> None:
    exports = [export_or_skip(array.export_k2) for _ in range(3)]
    assert {e.iqn for e in exports} == {array.k2_iqn}
    assert [e.lun for e in exports] == [1, 2, 3]
    data = exports[0].connection_info["data"]
    assert data["target_discovered"] is True and "target_portals" not in data

    # Singular keys: the initiator learns the other portal by SendTargets.
    raw.discover(data["target_portal"])
    records = [r.split() for r in probe.node_records()]  # "ip:port,tpgt iqn"
    assert sorted(r[0].split(",")[0] for r in records) == sorted(array.portals)
    assert {r[1] for r in records} == {array.k2_iqn}
    for portal in array.portals:
        raw.login(array.k2_iqn, portal)
    for e in exports:
        raw.wait_disks(e.wwid, 2)
        mp = raw.wait_map(e.wwid, 2)
        assert mp.vendor_product.startswith("KMNRIO,K2")
    assert len(probe.sessions()) == 2
    assert len(probe.maps()) == 3
    detach([e.wwid for e in exports], array.k2_iqn)
    raw.delete_discovery(data["target_portal"])


def test_k2_discovery_disabled_gives_plural_keys(array: IscsiArray) -> None:
    export = export_or_skip(lambda: array.export_k2(discovery=False))
    data = export.connection_info["data"]
    assert data["target_portals"] == array.portals
    assert data["target_iqns"] == [array.k2_iqn] * 2 and data["target_luns"] == [export.lun] * 2


def test_mutual_chap_logs_in_and_a_wrong_secret_is_refused(array: IscsiArray) -> None:
    chap = Chap.make(mutual=True)
    export = export_or_skip(lambda: array.export_datera(chap=chap))
    data = export.connection_info["data"]
    assert (data["auth_method"], data["auth_username"], data["auth_password"]) == (
        "CHAP", chap.username, chap.password)
    assert (data["auth_username_in"], data["auth_password_in"]) == (
        chap.username_in, chap.password_in)
    portal = array.portals[0]

    wrong = Chap(chap.username, "wrong" + chap.password, chap.username_in, chap.password_in)
    raw.new_node(export.iqn, portal, wrong)
    assert raw.login(export.iqn, portal, ok=(24,)) == 24  # ISCSI_ERR_LOGIN_AUTH_FAILED
    assert probe.sessions() == []

    # Mutual: the target must prove itself too. When the target's answer does not
    # match, open-iscsi reports 19 (non-retryable login failure), not 24.
    raw.set_chap(export.iqn, portal, Chap(chap.username, chap.password, chap.username_in,
                                          "wrong" + (chap.password_in or "")))
    assert raw.login(export.iqn, portal, ok=(19,)) == 19
    assert probe.sessions() == []
    raw.set_chap(export.iqn, portal, chap)
    raw.login(export.iqn, portal)
    assert probe.sessions() == [(portal, export.iqn)]
    raw.wait_disks(export.wwid, 1)
    raw.wait_map(export.wwid, 1)
    detach([export.wwid], export.iqn)


def test_discovery_chap(array: IscsiArray) -> None:
    chap = Chap.make()
    keys = array.set_discovery_chap(chap)
    assert keys["discovery_auth_method"] == "CHAP"
    export_or_skip(array.export_k2)
    portal = array.portals[0]
    assert raw.discover(portal, Chap(chap.username, "wrong" + chap.password), ok=(24,)) == 24
    raw.delete_discovery(portal)
    assert raw.discover(portal, chap) == 0
    assert len(probe.node_records()) == len(array.portals)
    run(["iscsiadm", "-m", "node", "-o", "delete"])
    raw.delete_discovery(portal)


def test_blocked_portal_fails_one_path_and_restore_brings_it_back(
        array: IscsiArray, faults: Faults) -> None:
    export = export_or_skip(array.export_datera)
    attach_static(export.connection_info["data"])
    raw.wait_map(export.wwid, 2)
    victim = array.portals[1]

    faults.block_portal(victim)
    degraded = wait_until(
        lambda: (m := probe.maps()[export.wwid]) and m.active == 1 and len(m.paths) == 2 and m,
        timeout=90, what="one failed path after blocking " + victim)
    failed = [p for p in degraded.paths if p.dm_state != "active" or p.checker != "ready"]
    assert len(failed) == 1
    faults.unblock_portal(victim)
    raw.wait_map(export.wwid, 2, timeout=120)
    detach([export.wwid], export.iqn)


def test_fc_two_fcoe_links_give_one_map_of_two_paths(
        fc_array: FcArray, faults: Faults) -> None:
    export = export_or_skip(fc_array.export)
    fabric: FcFabric = fc_array.fabric
    data = export.connection_info["data"]
    assert data["target_wwn"] == [link.target_wwpn for link in fabric.links]
    assert set(data["initiator_target_map"]) == {link.initiator_wwpn for link in fabric.links}

    for link in fabric.links:
        host = fabric.initiator_host(link)
        port = rport(host, link.target_wwpn)
        assert port is not None
        target_id = (port / "scsi_target_id").read_text().strip()
        write(f"/sys/class/scsi_host/{host}/scan", f"0 {target_id} {export.lun}")
    disks = raw.wait_disks(export.wwid, 2)
    assert {probe.vendor_model(sd) for sd in disks} == {("KMNRIO", "K2")}
    mp = raw.wait_map(export.wwid, 2)
    assert sorted(p.dev for p in mp.paths) == disks

    # The link fault: the remote port leaves Online and comes back.
    link = fabric.links[0]
    host = fabric.initiator_host(link)
    faults.fc_link_down(0)
    wait_until(lambda: (p := rport(host, link.target_wwpn)) is None
               or (p / "port_state").read_text().strip() != "Online",
               timeout=30, what="the FC remote port to leave Online")
    faults.fc_link_up(0)
    fabric.wait_online(link)

    raw.remove_map(export.wwid)
    raw.delete_disks(raw.disks_with_wwid(export.wwid))


def test_leak_check_catches_a_deliberate_leak(
        array: IscsiArray, baseline: leaks.Snapshot) -> None:
    assert leaks.find(baseline) == []
    export = export_or_skip(array.export_datera)
    portal = array.portals[0]
    raw.new_node(export.iqn, portal)
    raw.login(export.iqn, portal)
    raw.wait_disks(export.wwid, 1)

    found = "\n".join(leaks.find(baseline))
    for kind in ("sessions", "node records", "scsi devices", "block devices",
                 "lio objects", "loop devices"):
        assert kind in found, f"leak check missed {kind}:\n{found}"
    leaks.cleanup(baseline)
    # The array fixture's objects were swept as well: nothing is left to find.
    assert leaks.find(baseline) == []
    array.exports.clear()
