"""Kernel names from before a restart are never trusted (issue 31, items 1, 5 and 7).

A reboot takes every map, disk and session; Linux then hands the next volume the
same dm-N, sdX and H:C:T:L. An attachment whose device is gone keeps its WWID and
targets only: it answers with no device name, claims nothing by address, and its
teardown finds what is there anew. On the fake kernel, which reuses names as Linux does.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from hostagent.agent.restore import Outcome, Restorer
from hostagent.agent.service import Service
from hostagent.agent.state import Store
from hostagent.connection_info import ISCSI
from hostagent.errors import OperationInProgress
from hostagent.host.iscsiadm import IscsiErr
from hostagent.models import RESTORING, Attachment, Status
from tests.unit.fakes import FakeClock
from tests.unit.iscsihost import IQN, K2, P1, P2, WWID, Agent, info
from tests.unit.test_restore import reboot

B_WWID = "36001405" + "fedcba9876543210fedcba987"


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    a = Agent(tmp_path)
    a.host.kernel.luns[(IQN, 0)] = WWID
    a.host.kernel.luns[(K2, 0)] = B_WWID
    return a


def names(att: Attachment) -> set[str]:
    """Every kernel name an answer about `att` carries."""
    assert att.device is not None
    return {n for n in (att.device.path, *(p.device for p in att.device.paths),
                        *(p.hctl for p in att.device.paths)) if n}


def restore(service: Service, att_id: str) -> Outcome:
    clock = FakeClock()
    return asyncio.run(Restorer(service, clock=clock).restore(att_id, clock.monotonic() + 60))


def restarted(agent: Agent) -> Service:
    """A new agent on the same store and host, reconciled, nothing restored yet."""
    service = Service(Store(agent.state_dir), {ISCSI: agent.host.connector})
    asyncio.run(service.reconcile())
    return service


def test_a_restoring_attachment_answers_no_name_that_another_volume_now_has(agent: Agent
                                                                          ) -> None:
    agent.expect_attach()
    agent.attach("a", info())  # first: dm-0, sda, sdb, hosts 3 and 4
    agent.expect_attach(K2)
    agent.attach("b", info(K2, 0))
    reboot(agent)
    service = restarted(agent)
    for p in (P1, P2):  # b comes back first: the kernel gives it a's old names
        agent.host.expect_login(K2, p)
    assert restore(service, "b") == Outcome.RESTORED
    b = service.get("b")
    assert b.device is not None and b.device.path == "/dev/dm-0"

    a = service.get("a")
    assert a.status == Status.ATTACHED and a.phase == RESTORING
    assert a.device is not None and a.device.wwn == WWID
    assert a.device.path is None and a.device.paths == ()
    assert not names(a) & names(b)
    assert "dm-" not in str(a.last_error) and "sd" not in str(a.last_error)
    # The controller posts the same attach again: no 200 with b's map, nothing run.
    calls = len(agent.host.executor.calls)
    with pytest.raises(OperationInProgress, match="being restored"):
        asyncio.run(service.attach(agent.request("a", info())))
    assert len(agent.host.executor.calls) == calls
    assert service.get("a").device == a.device


def test_a_restoring_attachment_claims_no_address_it_had(agent: Agent) -> None:
    agent.expect_attach(K2)
    agent.attach("b", info(K2, 0))  # b first: hosts 3 and 4, H:C:T:L 3:0:0:0, 4:0:0:0
    agent.expect_attach()
    agent.attach("a", info())
    reboot(agent)
    service = restarted(agent)
    assert service.claims_for("a")().hctls == frozenset()  # b, restoring, claims none
    assert B_WWID in service.claims_for("a")().wwids  # but its volume and sessions, yes
    assert (K2, P1) in service.claims_for("a")().sessions
    # a's restore lands on b's old addresses and finds another volume at its LUN: it
    # fails, and what it made goes, however b's record once read.
    agent.host.kernel.luns[(IQN, 0)] = "36001405" + "1" * 25
    for p in (P1, P2):
        agent.host.expect_login(IQN, p)
    agent.host.expect_logout(IQN)
    assert restore(service, "a") == Outcome.FAILED
    agent.host.executor.assert_done()
    assert service.get("a").status == Status.FAILED
    assert agent.host.kernel.session_host(IQN, P1) is None
    assert not list(agent.host.kernel.p("/sys/class/scsi_device").iterdir())


def test_a_detach_of_a_restoring_attachment_spares_the_volume_that_took_its_names(
        agent: Agent) -> None:
    agent.expect_attach()
    agent.attach("a", info())
    agent.expect_attach(K2)
    agent.attach("b", info(K2, 0))
    reboot(agent)
    service = restarted(agent)
    for p in (P1, P2):
        agent.host.expect_login(K2, p)
    assert restore(service, "b") == Outcome.RESTORED
    b = service.get("b")
    assert b.device is not None
    flushed = list(agent.host.kernel.flushed)
    agent.host.executor.expect(["iscsiadm", "-m", "node", "-T", IQN, "-I", "hostagent",
                                "--logout"], returncode=IscsiErr.NO_OBJS_FOUND)
    done = asyncio.run(service.detach("a"))
    assert done.status == Status.DETACHED
    assert agent.host.kernel.flushed == flushed  # b's map, once a's name, not flushed
    assert f"del map {B_WWID}" not in agent.host.mpd.commands
    assert agent.host.kernel.dm_of(B_WWID) == "dm-0"
    assert agent.host.kernel.session_host(K2, P1) is not None
    assert not agent.host.record(IQN, P1).exists()  # a's own records went


class FullDisk(Store):
    """A store that can no longer record an attach's success (a full disk)."""

    def update(self, attachment_id: str, **changes: Any) -> Attachment:
        if changes.get("status") == Status.ATTACHED:
            raise sqlite3.OperationalError("database or disk is full")
        return super().update(attachment_id, **changes)


def test_a_store_that_cannot_record_the_device_does_not_skip_the_undo(agent: Agent) -> None:
    service = Service(FullDisk(agent.state_dir), {ISCSI: agent.host.connector})
    agent.expect_attach()
    agent.expect_release()
    with pytest.raises(sqlite3.OperationalError):
        asyncio.run(service.attach(agent.request("a", info())))
    agent.host.executor.assert_done()
    assert agent.host.kernel.dm_of(WWID) is None
    assert not list(agent.host.kernel.p("/sys/class/scsi_device").iterdir())
    att = service.get("a")
    assert att.status == Status.FAILED and att.last_error is not None
    assert "disk is full" in att.last_error["message"]


def test_a_map_rebuilt_while_the_agent_was_down_is_answered_by_its_name_now(agent: Agent
                                                                           ) -> None:
    agent.expect_attach()
    agent.attach("a", info())  # dm-0
    agent.expect_attach(K2)
    agent.attach("b", info(K2, 0))  # dm-1
    kernel = agent.host.kernel
    # While the agent is down the maps are flushed and built again, b's first.
    a_disks = sorted(os.listdir(kernel.p(f"/sys/block/{kernel.dm_of(WWID)}/slaves")))
    b_disks = sorted(os.listdir(kernel.p(f"/sys/block/{kernel.dm_of(B_WWID)}/slaves")))
    kernel.remove_map(WWID)
    kernel.remove_map(B_WWID)
    for sd in (*b_disks, *a_disks):
        kernel.add_path_to_map(sd)
    service = restarted(agent)
    a, b = service.get("a"), service.get("b")
    assert a.phase is None and b.phase is None  # present: nothing to restore
    assert a.device is not None and b.device is not None
    assert (a.device.path, b.device.path) == ("/dev/dm-1", "/dev/dm-0")
    assert not names(a) & names(b)
