"""Never touch what is not ours: each destructive step re-reads the host and spares
whatever another live attachment owns (issue 14). On the fake host, whose names
are reused as Linux reuses them and whose executor refuses any command not scripted.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from hostagent.agent import daemon
from hostagent.agent.service import claims_of
from hostagent.agent.state import claim_directory
from hostagent.config import Config
from hostagent.connection_info import parse
from hostagent.errors import (
    AgentRunning,
    DeviceBusy,
    HostCommandError,
    PortalUnreachable,
    WwidInUse,
)
from hostagent.health import (
    AttachmentObservation,
    MapObservation,
    PathObservation,
    evaluate,
    plan_heal,
)
from hostagent.host.iscsiadm import IscsiErr
from hostagent.models import Claims, Device, IscsiVolume, PathInfo, Portal, Status
from tests.unit.iscsihost import IQN, K2, P1, P2, WWID, Agent, Host, datera, info, k2

OTHER = "36001405" + "fedcba9876543210fedcba987"


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    a = Agent(tmp_path)
    a.host.kernel.luns[(IQN, 0)] = WWID
    return a


def attached(host: Host, vol: IscsiVolume) -> Device:
    """`vol` attached over both portals on a fresh target."""
    iqn = vol.targets[0].iqn
    host.kernel.luns[(iqn, vol.targets[0].lun)] = WWID
    host.expect_attach(iqn)
    return host.attach(vol)


def slaves(agent: Agent, wwid: str) -> list[str]:
    dm = agent.host.kernel.dm_of(wwid)
    assert dm is not None, f"no map of {wwid}"
    return sorted(os.listdir(agent.host.kernel.p(f"/sys/block/{dm}/slaves")))


# ---- 1. another live attachment of the same volume ------------------------------------

def test_ending_a_failed_attachment_spares_the_live_one_of_the_same_volume(agent: Agent
                                                                         ) -> None:
    for p in (P1, P2):  # the first attach meets dead portals
        agent.host.expect_new_node(IQN, p)
        agent.host.expect_login(IQN, p, returncode=IscsiErr.TRANS_TIMEOUT)
    with pytest.raises(PortalUnreachable):
        agent.attach("first", info())
    agent.host.clock.advance(60)  # the portals are back, and rested
    agent.expect_attach()
    agent.attach("second", info())
    agent.host.executor.assert_done()
    before = slaves(agent, WWID)
    calls = len(agent.host.executor.calls)
    gone = asyncio.run(agent.service.detach("first"))
    assert gone.status == Status.DETACHED
    assert gone.last_error is not None and "attached as second" in gone.last_error["message"]
    assert len(agent.host.executor.calls) == calls  # no logout, no record removed
    assert agent.host.mpd.commands.count(f"del map {WWID}") == 0
    assert slaves(agent, WWID) == before
    assert agent.host.record(IQN, P1).exists() and agent.host.record(IQN, P2).exists()
    assert agent.store.get("second").status == Status.ATTACHED  # type: ignore[union-attr]


def test_a_vanished_attachment_whose_names_were_reused_is_ended_touching_nothing(
        agent: Agent) -> None:
    agent.expect_attach()
    agent.attach("old", info())
    agent.store.update("old", status=Status.FAILED)  # its device vanished, as reconcile says
    # The volume is attached again: Linux gives its new disks and map the old names.
    agent.host.expect_logout(IQN)
    asyncio.run(agent.host.connector.recover(parse(info())))
    agent.expect_attach()
    agent.attach("new", info())
    old = agent.store.get("old")
    new = agent.store.get("new")
    assert old is not None and new is not None and old.device and new.device
    assert [p.hctl for p in old.device.paths] == [p.hctl for p in new.device.paths]
    agent.host.executor.assert_done()
    asyncio.run(agent.service.detach("old"))  # an unscripted logout would fail here
    assert agent.host.kernel.dm_of(WWID) is not None and len(slaves(agent, WWID)) == 2


# ---- 2. a refused detach leaves the map as it was -----------------------------------------

def test_a_detach_refused_by_an_open_map_leaves_it_queueing_and_attached(agent: Agent) -> None:
    agent.expect_attach()
    agent.attach("a1", info())
    agent.host.mpd.busy.add(WWID)  # a consumer holds the map open
    with pytest.raises(DeviceBusy):
        asyncio.run(agent.service.detach("a1"))
    assert agent.host.mpd.queueing_disabled == set()
    att = agent.store.get("a1")
    assert att is not None and att.status == Status.ATTACHED
    assert att.last_error is not None and att.last_error["code"] == "device_busy"
    assert len(slaves(agent, WWID)) == 2
    calls, commands = len(agent.host.executor.calls), len(agent.host.mpd.commands)
    counts = asyncio.run(agent.service.reconcile())  # a restart does not try again
    assert counts["detached"] == 0
    assert (len(agent.host.executor.calls), len(agent.host.mpd.commands)) == (calls, commands)


# ---- 3. a disk is deleted only if it still reports the volume's WWID --------------------

def test_a_disk_whose_lun_now_reports_another_volume_is_not_deleted(tmp_path: Path) -> None:
    host = Host(tmp_path)
    device = attached(host, k2(1))
    hctl = next(p.hctl for p in device.paths if p.portal == P2)
    # The array gave LUN 1 to another volume, and the kernel read its identity.
    host.kernel.luns[(K2, 1)] = OTHER
    host.fs.write(f"/sys/class/scsi_device/{hctl}/device/rescan", "1")
    host.expect_logout(K2, P1)  # P1 goes; P2 still carries the other volume's disk
    result = asyncio.run(host.connector.detach(k2(1), device))
    host.executor.assert_done()
    assert host.fs.exists(f"/sys/class/scsi_device/{hctl}")
    assert any(f"{hctl} now reports {OTHER}" in w for w in result.warnings)


# ---- 4. sessions another live attachment expects --------------------------------------

def test_a_k2_session_whose_only_path_of_another_volume_is_down_is_kept(agent: Agent) -> None:
    agent.host.kernel.luns[(K2, 1)] = WWID
    agent.host.kernel.luns[(K2, 2)] = OTHER
    agent.expect_attach(K2)
    agent.attach("lun1", info(K2, 1))
    agent.attach("lun2", info(K2, 2))  # on the same sessions: no command
    lun2 = agent.store.get("lun2")
    assert lun2 is not None and lun2.device is not None
    down = next(p for p in lun2.device.paths if p.portal == P2)
    # lun2's path through P2 fails and its disk goes; the session stays up.
    agent.host.kernel.remove_map(OTHER)
    agent.host.kernel.delete_disk(down.hctl)
    agent.host.kernel.add_path_to_map(next(p.device for p in lun2.device.paths
                                           if p.portal == P1))
    calls = len(agent.host.executor.calls)
    asyncio.run(agent.service.detach("lun1"))  # an unscripted logout would fail here
    assert len(agent.host.executor.calls) == calls
    assert agent.host.kernel.session_host(K2, P2) is not None
    assert agent.host.record(K2, P2).exists()


def test_claims_are_what_live_attachments_own(agent: Agent) -> None:
    agent.expect_attach()
    att, _ = agent.attach("a1", info())
    assert att.device is not None
    claims = claims_of([att])
    assert claims.wwids == {WWID}
    assert claims.hctls == {p.hctl for p in att.device.paths}
    assert claims.sessions == {(IQN, P1), (IQN, P2)}
    assert claims_of([]) == Claims()


# ---- 5. one daemon per state directory ---------------------------------------------------

def test_a_second_daemon_on_the_same_state_directory_stops_touching_nothing(
        tmp_path: Path) -> None:
    cfg = Config(state_dir=str(tmp_path / "state"), socket=str(tmp_path / "run/agent.sock"),
                 lock_path=str(tmp_path / "locks"))
    claim_directory(cfg.state_dir)  # the first daemon
    os.makedirs(tmp_path / "run")
    Path(cfg.socket).write_text("")  # its socket
    with pytest.raises(AgentRunning, match=f"pid {os.getpid()}"):
        asyncio.run(daemon.serve(cfg))
    assert Path(cfg.socket).exists()
    assert not (tmp_path / "state" / "hostagent.db").exists()  # no store opened, no reconcile


# ---- 6. reconcile goes on past any exception ----------------------------------------------

def test_reconcile_survives_an_oserror_on_one_attachment(agent: Agent,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    agent.host.kernel.luns[(K2, 1)] = OTHER
    agent.expect_attach()
    agent.attach("bad", info())
    agent.expect_attach(K2)
    agent.attach("good", info(K2, 1))
    real = agent.host.connector.current

    def current(device: Device) -> Device | None:
        if device.wwn == WWID:
            raise OSError(5, "Input/output error", "/sys/block/dm-0/dm/uuid")
        return real(device)

    monkeypatch.setattr(agent.host.connector, "current", current)
    counts = asyncio.run(agent.service.reconcile())
    assert counts["failed"] == 1
    bad = agent.store.get("bad")
    assert bad is not None and bad.last_error is not None
    assert bad.last_error["code"] == "internal_error" and "OSError" in bad.last_error["message"]
    assert agent.store.get("good").status == Status.ATTACHED  # type: ignore[union-attr]


# ---- 9. a bug is not a missing path -------------------------------------------------------

def test_a_bug_on_one_path_propagates_and_the_attach_is_undone(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.kernel.luns[(IQN, 0)] = WWID
    host.expect_new_node(IQN, P1)
    host.expect_login(IQN, P1)  # P2's commands are not scripted: the fake raises
    host.expect_logout(IQN)
    with pytest.raises(AssertionError, match="unexpected command"):
        host.attach(parse(info()))  # type: ignore[arg-type]
    assert host.kernel.dm_of(WWID) is None and host.kernel.session_host(IQN, P1) is None
    assert [argv[:7] for argv in host.executor.unexpected] == \
        [("iscsiadm", "-m", "node", "-T", IQN, "-p", P2)]


# ---- 10. single-path self-healing ------------------------------------------------------------

def test_single_path_healing_never_replaces_the_consumers_own_disk() -> None:
    offline = PathObservation(P1, IQN, "3:0:0:0", "sda", session_state="LOGGED_IN",
                              connection_state="up", sd_state="offline", wwid=WWID)
    single = AttachmentObservation("a1", "vol-1", "iscsi", "/dev/sda", WWID, (offline,),
                                   MapObservation(False, None, None, None))
    assert plan_heal(evaluate(single)) == []


# ---- 11. edits the host depends on are atomic ------------------------------------------------

def test_a_crash_inside_an_edit_leaves_the_old_file_whole(agent: Agent,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    wwids = agent.host.kernel.p("/etc/multipath/wwids")
    wwids.parent.mkdir(parents=True, exist_ok=True)
    wwids.write_text(f"/{WWID}/\n")
    os.chmod(wwids, 0o600)

    def crash(*_: object) -> None:
        raise KeyboardInterrupt  # the process dies between writing and renaming

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        agent.host.connector.multipath.remember_wwid(OTHER)
    assert wwids.read_text() == f"/{WWID}/\n"
    monkeypatch.undo()
    agent.host.connector.multipath.remember_wwid(OTHER)
    assert wwids.read_text() == f"/{WWID}/\n/{OTHER}/\n"
    assert wwids.stat().st_mode & 0o777 == 0o600  # the mode is kept (records hold secrets)


# ---- 12. duplicate WWIDs --------------------------------------------------------------------

def test_a_volume_reporting_a_live_attachments_wwid_is_refused_not_merged(agent: Agent
                                                                          ) -> None:
    agent.expect_attach()
    agent.attach("a1", info())
    before = slaves(agent, WWID)
    agent.host.kernel.luns[(K2, 1)] = WWID  # another volume, the same WWID
    agent.expect_attach(K2)
    agent.host.expect_logout(K2)
    with pytest.raises(WwidInUse):
        agent.attach("imposter", info(K2, 1))
    agent.host.executor.assert_done()
    assert slaves(agent, WWID) == before
    assert not [d for d in agent.host.kernel.p("/sys/class/scsi_device").iterdir()
                if d.name.endswith(":1")]
    failed = agent.store.get("imposter")
    assert failed is not None and failed.status == Status.FAILED


def test_claimed_disks_are_never_deleted(tmp_path: Path) -> None:
    host = Host(tmp_path)
    device = attached(host, datera())
    keep = device.paths[0].hctl
    warnings: list[str] = []
    asyncio.run(host.connector.devices.delete_disks(
        [PathInfo("", keep)], WWID, claims=Claims(hctls=frozenset({keep})), warnings=warnings))
    assert host.fs.exists(f"/sys/class/scsi_device/{keep}")
    assert warnings == [f"{keep} is another live attachment's disk: left alone"]


# ---- 8. another iface's node records, and iscsiadm's own lock -------------------------

def test_another_ifaces_flat_record_is_never_taken_edited_or_removed(tmp_path: Path) -> None:
    host = Host(tmp_path)
    theirs = host.record(IQN, P1)
    theirs.parent.mkdir(parents=True, exist_ok=True)
    theirs.write_text("node.name = theirs\niface.iscsi_ifacename = default\n")
    adm = host.connector.iscsiadm
    assert not adm.has_node(IQN, Portal.parse(P1))
    with pytest.raises(HostCommandError):
        asyncio.run(adm.update_node(IQN, Portal.parse(P1), {"node.session.scan": "manual"}))
    asyncio.run(adm.delete_nodes(IQN))
    assert theirs.read_text() == "node.name = theirs\niface.iscsi_ifacename = default\n"


def test_record_edits_wait_for_iscsiadms_node_db_lock(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.kernel.luns[(IQN, 0)] = WWID
    held = host.kernel.p("/run/lock/iscsi/lock.write")
    held.parent.mkdir(parents=True)
    held.write_text("")  # an iscsiadm is writing records
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            held.unlink()  # that iscsiadm is done
        await asyncio.sleep(0)

    host.clock.sleep = sleep  # type: ignore[method-assign]
    host.expect_new_node(IQN, P1)
    asyncio.run(host.connector.iscsiadm.create_node(IQN, Portal.parse(P1),
                                                    {"node.session.scan": "manual"}))
    assert sleeps == [0.01, 0.01, 0.01]
    assert "node.session.scan = manual" in host.record(IQN, P1).read_text()
    assert not held.exists()  # ours was released too


# ---- 13. a forced detach of a map still open --------------------------------------------------

def test_a_forced_detach_of_an_open_map_completes_and_names_its_holder(agent: Agent) -> None:
    agent.expect_attach()
    att, _ = agent.attach("a1", info())
    assert att.device is not None
    kernel = agent.host.kernel
    dm = kernel.dm_of(WWID)
    agent.host.mpd.busy.add(WWID)  # process 4242 holds the map open
    fd = kernel.p("/proc/4242/fd/3")
    fd.parent.mkdir(parents=True)
    fd.symlink_to(kernel.p(f"/dev/{dm}"))
    agent.host.executor.expect(["dmsetup", "remove", "--force", "--deferred", WWID],
                               side_effect=lambda: kernel.error_table(WWID))
    agent.expect_release()
    gone = asyncio.run(agent.service.detach("a1", force=True))
    agent.host.executor.assert_done()
    assert gone.status == Status.DETACHED
    assert gone.last_error is not None and gone.last_error["code"] == "forced"
    assert "held by processes 4242" in gone.last_error["message"]
    assert "data may be lost" in gone.last_error["message"]
    assert kernel.disks_on(3) == [] and kernel.disks_on(4) == []
    assert kernel.dm_of(WWID) == dm  # it goes when process 4242 closes it
    assert f"disablequeueing map {WWID}" in agent.host.mpd.commands


# ---- 7. a rescan right after a delete -----------------------------------------------------

def test_a_disk_scanned_anew_is_awaited_past_the_old_ones_udev_entry(tmp_path: Path) -> None:
    host = Host(tmp_path)
    kernel = host.kernel
    kernel.luns[(IQN, 0)] = WWID
    h = kernel.add_session(IQN, P1)
    old = kernel.add_disk(h, 0, WWID)  # a leftover nobody holds
    udev = host.connector.devices.udev
    udev.settle()  # type: ignore[attr-defined]
    sd, created = asyncio.run(host.connector.devices.scan(
        f"{h}:0:0:0", lambda: AssertionError("no LUN")))  # type: ignore[arg-type, return-value]
    assert created and sd == old  # Linux gave the new disk the old name (and dev number)
    # Returned only once udev had processed the old disk's removal and the new one's add.
    assert kernel.udev_pending == []
