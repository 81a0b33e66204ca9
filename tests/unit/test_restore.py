"""Restore at start-up, on the fake host: a reboot took the sessions, disks and maps
away; the agent makes them again from its node records (the store keeps no secret),
never accepts another WWID, and fails with the reason what the array no longer has."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hostagent.agent.restore import Restorer
from hostagent.agent.service import Service
from hostagent.agent.state import Store
from hostagent.connection_info import ISCSI
from hostagent.host.iscsiadm import IscsiErr
from hostagent.models import Status
from tests.unit.fakes import FakeClock
from tests.unit.iscsihost import IQN, K2, P1, P2, SECRET, WWID, Agent, info

K2_WWID = "36001405" + "fedcba9876543210fedcba987"


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    a = Agent(tmp_path)
    a.host.kernel.luns[(IQN, 0)] = WWID
    a.host.kernel.luns[(K2, 1)] = K2_WWID
    return a


def reboot(agent: Agent) -> None:
    """What a reboot leaves: node records and the store; no session, disk or map."""
    kernel = agent.host.kernel
    for wwid in (WWID, K2_WWID):
        kernel.remove_map(wwid)
    for iqn in (IQN, K2):
        for p in (P1, P2):
            host = kernel.session_host(iqn, p)
            if host is not None:
                for hctl in kernel.disks_on(host):
                    kernel.delete_disk(hctl)
                kernel.remove_session(iqn, p)
    agent.host.connector.devices.udev.settle()  # type: ignore[attr-defined]


def start(agent: Agent, clock: FakeClock | None = None) -> tuple[Service, dict[str, int]]:
    service = Service(Store(agent.state_dir), {ISCSI: agent.host.connector})
    asyncio.run(service.reconcile())
    counts = asyncio.run(Restorer(service, clock=clock or FakeClock()).run())
    return service, counts


def test_attached_volumes_come_back_after_a_reboot_from_our_node_records(agent: Agent
                                                                         ) -> None:
    agent.expect_attach()
    agent.attach("datera", info(secret=SECRET))
    agent.expect_attach(K2)
    agent.attach("k2", info(K2, 1))
    before = {a.id: a.device for a in agent.store.list()}
    records = agent.host.record(IQN, P1).read_text()
    assert f"node.session.auth.password = {SECRET}" in records
    reboot(agent)
    for iqn in (IQN, K2):  # a login from the record, no record made or changed
        for p in (P1, P2):
            agent.host.expect_login(iqn, p)
    service, counts = start(agent)
    agent.host.executor.assert_done()
    assert counts == {"restored": 2, "failed": 0}
    for att in service.list():
        assert att.status == Status.ATTACHED and att.phase is None and att.last_error is None
        device, old = att.device, before[att.id]
        assert device is not None and old is not None
        assert device.wwn == old.wwn and len(device.paths) == 2 and device.missing == ()
        assert agent.host.kernel.dm_of(device.wwn) == device.path.removeprefix("/dev/")
    assert agent.host.record(IQN, P1).read_text() == records  # the secret was not "***"d


def test_a_lun_the_array_unmapped_meanwhile_fails_with_the_reason_and_leaves_nothing(
        agent: Agent) -> None:
    agent.expect_attach(K2)
    agent.attach("k2", info(K2, 1))
    reboot(agent)
    del agent.host.kernel.luns[(K2, 1)]
    for p in (P1, P2):
        agent.host.expect_login(K2, p)
    agent.host.expect_logout(K2)  # the sessions it made go; its records stay
    service, counts = start(agent)
    agent.host.executor.assert_done()
    assert counts == {"restored": 0, "failed": 1}
    att = service.get("k2")
    assert att.status == Status.FAILED and att.last_error is not None
    assert "no longer exports the volume" in att.last_error["message"]
    assert agent.host.kernel.session_host(K2, P1) is None
    assert agent.host.record(K2, P1).exists()  # the CHAP settings' only copy is kept


def test_a_lun_id_reused_by_another_volume_is_never_attached_in_its_place(agent: Agent
                                                                         ) -> None:
    agent.expect_attach(K2)
    agent.attach("k2", info(K2, 1))
    reboot(agent)
    agent.host.kernel.luns[(K2, 1)] = "36001405" + "1" * 25  # LUN 1 is another volume now
    for p in (P1, P2):
        agent.host.expect_login(K2, p)
    agent.host.expect_logout(K2)
    service, counts = start(agent)
    agent.host.executor.assert_done()
    assert counts == {"restored": 0, "failed": 1}
    att = service.get("k2")
    assert att.status == Status.FAILED and att.last_error is not None
    assert att.last_error["code"] == "wwn_mismatch"
    assert agent.host.kernel.dm_of("36001405" + "1" * 25) is None
    assert not list(agent.host.kernel.p("/sys/class/scsi_device").iterdir())


def test_a_portal_not_up_yet_is_tried_again_then_restored(agent: Agent) -> None:
    agent.expect_attach()
    agent.attach("datera", info(secret=SECRET))
    reboot(agent)
    for p in (P1, P2):  # the network is not up at the first try
        agent.host.expect_login(IQN, p, returncode=IscsiErr.TRANS)
    for p in (P1, P2):
        agent.host.expect_login(IQN, p)
    clock = agent.host.clock  # the engine's: its portals rest 30 s after the failure
    service, counts = start(agent, clock)
    agent.host.executor.assert_done()
    assert counts == {"restored": 1, "failed": 0}
    # 10 s, then the rest the portals still had (no login meanwhile): 30 s in all.
    assert clock.sleeps == [10.0, 20.0]
    assert service.get("datera").status == Status.ATTACHED


def test_restore_off_marks_them_failed(agent: Agent) -> None:
    agent.expect_attach()
    agent.attach("datera", info())
    reboot(agent)
    service = Service(Store(agent.state_dir), {ISCSI: agent.host.connector}, restore=False)
    counts = asyncio.run(service.reconcile())
    assert counts["vanished"] == 1 and counts["restoring"] == 0
    att = service.get("datera")
    assert att.status == Status.FAILED and att.last_error is not None
    assert att.last_error["code"] == "device_vanished"
