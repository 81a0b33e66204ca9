"""Restore at start-up, on the fake host: a reboot took the sessions, disks and maps
away; the agent makes them again from its node records (the store keeps no secret),
never accepts another WWID, and fails with the reason what the array no longer has."""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

import pytest

from hostagent.agent.restore import RestorePolicy, Restorer, next_wait
from hostagent.agent.service import Service
from hostagent.agent.state import Store
from hostagent.connection_info import ISCSI
from hostagent.errors import CommandFailed
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


def array_down_until(agent: Agent, iqn: str, up_at: float) -> list[float]:
    """The array's portals do not answer a login (iscsiadm's transport error) until
    `up_at` on the host's clock, then serve it. Each refused login arms the next one, as
    the array would answer any number of them; the times of the logins are returned."""
    host, logins = agent.host, []

    def arm(portal: str) -> None:
        argv = ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "-I", "hostagent",
                "--login"]

        def effect() -> None:
            logins.append(host.clock.now)
            if host.clock.now < up_at:
                arm(portal)
                raise CommandFailed(argv, IscsiErr.TRANS,
                                    f"iscsiadm: initiator reported error ({IscsiErr.TRANS})")
            host.kernel.add_session(iqn, portal)
        host.executor.expect(argv, side_effect=effect)
    for p in (P1, P2):
        arm(p)
    return logins


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
        assert device is not None and old is not None and device.path is not None
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


# ---- the time policy: an array that boots after its hosts ---------------------------

def test_an_array_back_ten_minutes_after_its_hosts_is_restored_not_failed(
        agent: Agent, caplog: pytest.LogCaptureFixture) -> None:
    agent.expect_attach(K2)
    agent.attach("k2", info(K2, 1))
    reboot(agent)
    clock = agent.host.clock  # the engine's too: its portals rest on the same time
    up_at = clock.now + 600
    logins = array_down_until(agent, K2, up_at)
    caplog.set_level(logging.INFO, "hostagent.restore")
    service, counts = start(agent, clock)
    agent.host.executor.assert_done()
    assert counts == {"restored": 1, "failed": 0}
    att = service.get("k2")
    assert att.status == Status.ATTACHED and att.phase is None and att.last_error is None
    # Tried all along, the waits growing to their cap, and back soon after the array.
    assert len(logins) > 10 and max(clock.sleeps) == 60.0
    assert up_at <= clock.now <= up_at + 60.0
    lines = [r.getMessage() for r in caplog.records if r.name == "hostagent.restore"]
    assert "until 1800 s after start-up" in lines[0]  # the policy, at the first line
    assert any("portal_unreachable" in line and "next try in" in line for line in lines)


def test_an_array_still_down_after_restore_timeout_fails_the_volume_with_the_reason(
        agent: Agent) -> None:
    agent.expect_attach(K2)
    agent.attach("k2", info(K2, 1))
    reboot(agent)
    clock = agent.host.clock
    began = clock.now
    logins = array_down_until(agent, K2, math.inf)
    service, counts = start(agent, clock)
    assert agent.host.executor.unexpected == []
    assert counts == {"restored": 0, "failed": 1}
    att = service.get("k2")
    assert att.status == Status.FAILED and att.phase is None and att.last_error is not None
    assert att.last_error["code"] in ("portal_unreachable", "portal_resting")
    assert "after 1800 s (restore_timeout)" in att.last_error["message"]
    # No try began after restore_timeout, and none was left out before it.
    assert 1800 - 60 <= logins[-1] - began <= 1800
    assert clock.now - began <= 1800


def test_restore_timeout_0_tries_once(agent: Agent) -> None:
    agent.expect_attach(K2)
    agent.attach("k2", info(K2, 1))
    reboot(agent)
    logins = array_down_until(agent, K2, math.inf)
    service = Service(Store(agent.state_dir), {ISCSI: agent.host.connector})
    asyncio.run(service.reconcile())
    restorer = Restorer(service, clock=agent.host.clock, policy=RestorePolicy(timeout=0))
    assert asyncio.run(restorer.run()) == {"restored": 0, "failed": 1}
    assert len(logins) == 2 and agent.host.clock.sleeps == []
    assert service.get("k2").status == Status.FAILED


@pytest.mark.parametrize(("failed_tries", "retry_after", "wait"), [
    (1, 0.0, 10.0), (2, 0.0, 20.0), (3, 0.0, 40.0), (4, 0.0, 60.0), (40, 0.0, 60.0),
    (1, 25.0, 25.0),  # a resting portal is not tried before it may be
    (4, 90.0, 90.0),  # not even past the cap
])
def test_the_wait_before_the_next_try_grows_to_its_cap(failed_tries: int, retry_after: float,
                                                       wait: float) -> None:
    assert next_wait(RestorePolicy(), failed_tries, retry_after) == wait


def test_a_try_waiting_for_a_target_lock_longer_than_the_attach_timeout_still_succeeds(
        agent: Agent) -> None:
    # A large K2 host: every volume's restore shares the target's lock; only the time a
    # try spends once it holds the lock counts against [timeouts] attach.
    agent.expect_attach(K2)
    agent.attach("k2", info(K2, 1))
    reboot(agent)
    for p in (P1, P2):
        agent.host.expect_login(K2, p)
    clock = agent.host.clock
    service = Service(Store(agent.state_dir), {ISCSI: agent.host.connector},
                      attach_timeout=0.2)
    asyncio.run(service.reconcile())

    async def scenario() -> dict[str, int]:
        held = asyncio.Event()

        async def other_operation() -> None:
            async with agent.host.connector.locks.hold([K2]):
                held.set()
                await asyncio.sleep(0.5)  # real time: asyncio.timeout runs on the loop's
        holder = asyncio.create_task(other_operation())
        await held.wait()
        counts = await Restorer(service, clock=clock).run()
        await holder
        return counts

    assert asyncio.run(scenario()) == {"restored": 1, "failed": 0}
    agent.host.executor.assert_done()
    assert clock.sleeps == []  # the first try, not a later one
    assert service.get("k2").phase is None


def test_a_try_that_holds_its_locks_has_the_attach_timeout_from_then_on(
        agent: Agent, caplog: pytest.LogCaptureFixture) -> None:
    # The other side of the rule above: once the engine holds its locks, a hung step
    # (a login that does not come back) ends the try after [timeouts] attach, not at
    # the end of restore_timeout, and the next try restores the volume.
    agent.expect_attach(K2)
    agent.attach("k2", info(K2, 1))
    reboot(agent)
    for p in (P1, P2):
        agent.host.executor.expect(
            ["iscsiadm", "-m", "node", "-T", K2, "-p", p, "-I", "hostagent", "--login"],
            delay=2.0)  # real seconds, within the login's own command timeout
    for p in (P1, P2):
        agent.host.expect_login(K2, p)
    clock = agent.host.clock
    service = Service(Store(agent.state_dir), {ISCSI: agent.host.connector},
                      attach_timeout=0.2)
    asyncio.run(service.reconcile())
    caplog.set_level(logging.INFO, "hostagent.restore")
    assert asyncio.run(Restorer(service, clock=clock).run()) == {"restored": 1, "failed": 0}
    agent.host.executor.assert_done()
    assert clock.sleeps == [10.0]
    assert any("did not finish within 0.2 s" in r.getMessage() for r in caplog.records)


class DetachingClock(FakeClock):
    """A clock on which, while the restore waits for its next try, the attachment is
    detached (the row as a finished detach leaves it)."""

    def __init__(self, service: Service, att_id: str) -> None:
        super().__init__()
        self.service, self.att_id = service, att_id

    async def sleep(self, seconds: float) -> None:
        self.service.store.update(self.att_id, status=Status.DETACHED, phase=None)
        await super().sleep(seconds)


def test_an_attachment_detached_while_its_restore_waited_is_not_counted_restored(
        agent: Agent, caplog: pytest.LogCaptureFixture) -> None:
    agent.expect_attach()
    agent.attach("datera", info(secret=SECRET))
    reboot(agent)
    for p in (P1, P2):
        agent.host.expect_login(IQN, p, returncode=IscsiErr.TRANS)
    service = Service(Store(agent.state_dir), {ISCSI: agent.host.connector})
    asyncio.run(service.reconcile())
    caplog.set_level(logging.INFO, "hostagent.restore")
    counts = asyncio.run(Restorer(service, clock=DetachingClock(service, "datera")).run())
    agent.host.executor.assert_done()
    assert counts == {"restored": 0, "failed": 0}
    assert service.get("datera").status == Status.DETACHED
    summary = [r.getMessage() for r in caplog.records if "attachments in" in r.getMessage()]
    assert summary == [summary[0]] and summary[0].startswith("restored 0 of 1 attachments")
    assert "1 detached or changed meanwhile" in summary[0]
