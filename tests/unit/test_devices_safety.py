"""Kernel names from the past are never trusted, rollbacks never force, nothing blocks
the event loop, maps are named as device-mapper names them (issue 31, items 2, 3, 4
and 6). On the fake host, whose names are reused as Linux reuses them, whose
multipathd knows maps by their dm name only and whose executor refuses any
command not scripted.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from hostagent.errors import CommandFailed, DeviceBusy, HostAgentError, HostCommandError
from hostagent.models import Access, Device, IscsiVolume
from tests.unit import fchost
from tests.unit.fakehost import expect_dmsetup_remove
from tests.unit.iscsihost import IQN, K2, P1, P2, WWID, Host, datera, k2

OTHER = "36001405" + "fedcba9876543210fedcba987"


@pytest.fixture
def host(tmp_path: Path) -> Host:
    h = Host(tmp_path)
    h.kernel.luns[(IQN, 0)] = WWID
    return h


def slaves(host: Host, wwid: str) -> list[str]:
    dm = host.kernel.dm_of(wwid)
    assert dm is not None, f"no map of {wwid}"
    return sorted(os.listdir(host.kernel.p(f"/sys/block/{dm}/slaves")))


def attach_datera(host: Host, multipath: bool = True) -> Device:
    if multipath:
        host.expect_attach(IQN)
    else:  # the first portal gives the one path
        host.expect_new_node(IQN, P1)
        host.expect_login(IQN, P1)
    return host.attach(datera(), multipath=multipath)


def _expecting(host: Host, vol: IscsiVolume) -> IscsiVolume:
    host.expect_attach(vol.targets[0].iqn)
    return vol


# ---- item 2: a detach flushes only what is re-identified now -------------------------

def test_a_detach_whose_map_is_gone_never_flushes_the_map_now_holding_its_old_name(
        host: Host) -> None:
    a = host.attach(_expecting(host, datera()))
    # A's map and disks vanish (its paths failed and were cleaned up by hand)...
    host.kernel.remove_map(WWID)
    for p in a.paths:
        host.kernel.delete_disk(p.hctl)
    host.connector.devices.udev.settle()  # type: ignore[attr-defined]
    # ...and another volume gets A's old names: dm-0 and its disks' sd names.
    host.kernel.luns[(K2, 1)] = OTHER
    host.expect_attach(K2)
    b = host.attach(k2(1))
    assert b.path == a.path and {p.device for p in b.paths} == {p.device for p in a.paths}
    before, commands = slaves(host, OTHER), len(host.mpd.commands)
    host.expect_logout(IQN)  # A's sessions hold no disk: they go
    result = asyncio.run(host.connector.detach(datera(), a))
    host.executor.assert_done()
    assert host.kernel.flushed == []  # B's map was not flushed
    assert slaves(host, OTHER) == before
    assert host.mpd.commands[commands:] == []  # nothing sent about any map
    assert not result.data_may_be_lost


def test_a_single_path_detach_never_flushes_or_deletes_the_disk_now_at_its_old_name(
        host: Host) -> None:
    a = attach_datera(host, multipath=False)
    hctl = a.paths[0].hctl
    # The array gives LUN 0 to another volume; A's disk goes, B's comes at the same
    # H:C:T:L on the same session, with A's old sd name.
    host.kernel.delete_disk(hctl)
    host.connector.devices.udev.settle()  # type: ignore[attr-defined]
    host.kernel.luns[(IQN, 0)] = OTHER
    b = host.attach(datera(), multipath=False)  # on the live session: no command
    assert b.path == a.path and b.paths[0].hctl == hctl
    result = asyncio.run(host.connector.detach(datera(), a))
    host.executor.assert_done()  # no logout: B's disk sits on the session
    assert host.kernel.flushed == []
    assert host.fs.exists(f"/sys/class/scsi_device/{hctl}")
    assert any(f"{hctl} now reports {OTHER}" in w for w in result.warnings)


def test_a_single_path_detach_flushes_its_own_disk_found_again_by_wwid(host: Host) -> None:
    a = attach_datera(host, multipath=False)
    host.expect_logout(IQN)
    asyncio.run(host.connector.detach(datera(), a))
    assert host.kernel.flushed == [a.path]


# ---- item 3: a rollback never forces an open map away ------------------------------

def test_an_attach_rollback_leaves_an_open_map_with_its_disks_and_sessions_and_says_so(
        host: Host) -> None:
    # The map is built, then the attach fails (BLKROSET does not take); meanwhile
    # LVM autoactivation opened the map.
    host.fs.set_read_only = lambda dev_path: None  # type: ignore[method-assign]
    host.mpd.busy.add(WWID)
    vol = _expecting(host, replace(datera(), access=Access(read_only=True)))
    with pytest.raises(HostCommandError, match="did not become read-only") as caught:
        host.attach(vol)
    host.executor.assert_done()  # no dmsetup, no logout
    assert not any(c.startswith("disablequeueing") for c in host.mpd.commands)
    assert len(slaves(host, WWID)) == 2
    assert host.kernel.session_host(IQN, P1) is not None
    assert host.kernel.session_host(IQN, P2) is not None
    assert host.record(IQN, P1).exists() and host.record(IQN, P2).exists()
    left = caught.value.details["left_on_host"]
    assert len(left) == 1 and WWID in left[0] and "in use" in left[0]


def test_a_recovery_that_finds_the_map_open_leaves_it_and_raises_device_busy(
        host: Host) -> None:
    attach_datera(host)
    host.mpd.busy.add(WWID)
    with pytest.raises(DeviceBusy) as caught:
        asyncio.run(host.connector.recover(datera()))
    host.executor.assert_done()
    assert len(slaves(host, WWID)) == 2 and host.mpd.queueing_disabled == set()
    assert WWID in caught.value.details["left_on_host"][0]


def test_an_fc_attach_rollback_leaves_an_open_map(tmp_path: Path) -> None:
    fh = fchost.Host(tmp_path)
    fh.hba(fchost.I1, fchost.T1, fchost.T2)
    fh.export(1)
    fh.fs.set_read_only = lambda dev_path: None  # type: ignore[method-assign]
    fh.mpd.busy.add(fchost.WWID)
    vol = replace(fchost.k2(1), access=Access(read_only=True))
    with pytest.raises(HostCommandError) as caught:
        fh.attach(vol)
    fh.executor.assert_done()  # no dmsetup
    assert fh.kernel.dm_of(fchost.WWID) is not None
    assert not any(c.startswith("disablequeueing") for c in fh.mpd.commands)
    assert fchost.WWID in caught.value.details["left_on_host"][0]


# ---- item 4: nothing blocks the event loop --------------------------------------------

def test_a_flush_that_blocks_leaves_the_loop_running_and_fails_the_detach_by_its_deadline(
        host: Host) -> None:
    a = attach_datera(host)
    host.connector.devices.device_timeout = 0.2
    gate = host.kernel.all_paths_dead(WWID)  # queueing: a flush blocks

    async def scenario() -> tuple[BaseException | None, int, float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(ticker())
        start = time.monotonic()
        try:
            await host.connector.detach(datera(), a)
            error = None
        except HostAgentError as err:
            error = err
        took = time.monotonic() - start
        beat.cancel()
        gate.set()  # the stuck flush ends (its thread was never waited for)
        return error, ticks, took

    error, ticks, took = asyncio.run(scenario())
    assert isinstance(error, DeviceBusy) and "0.2 s" in error.message
    assert took < 2.0 and ticks >= 5  # the loop ran meanwhile
    assert len(slaves(host, WWID)) == 2  # nothing was torn down
    host.executor.assert_done()


def test_a_forced_detach_turns_queueing_off_before_the_flush(host: Host) -> None:
    a = attach_datera(host)
    host.mpd.busy.add(WWID)  # a consumer holds it open
    host.kernel.all_paths_dead(WWID)
    expect_dmsetup_remove(host.executor, host.kernel, WWID)
    host.expect_logout(IQN)
    start = time.monotonic()
    result = asyncio.run(host.connector.detach(datera(), a, force=True))
    assert time.monotonic() - start < 2.0  # the flush failed at once, never waited on
    host.executor.assert_done()
    log = host.kernel.log
    off, flush = log.index(f"multipathd disablequeueing map {WWID}"), log.index("flush /dev/dm-0")
    assert off < flush
    assert result.data_may_be_lost
    assert any("flushing /dev/dm-0: failed" in w for w in result.warnings)


# ---- item 6: maps named as device-mapper names them --------------------------------------

@pytest.fixture
def friendly(tmp_path: Path) -> Host:
    h = Host(tmp_path)
    h.kernel.luns[(IQN, 0)] = WWID
    h.kernel.user_friendly_names = True
    return h


def test_a_plain_detach_removes_a_map_named_mpatha(friendly: Host) -> None:
    a = attach_datera(friendly)
    assert friendly.kernel.map_name(WWID) == "mpatha"
    friendly.expect_logout(IQN)
    asyncio.run(friendly.connector.detach(datera(), a))
    assert friendly.kernel.dm_of(WWID) is None
    assert "del map mpatha" in friendly.mpd.commands


def test_a_forced_detach_of_an_open_map_named_mpatha_names_it_so(friendly: Host) -> None:
    a = attach_datera(friendly)
    friendly.mpd.busy.add("mpatha")
    expect_dmsetup_remove(friendly.executor, friendly.kernel, "mpatha")
    friendly.expect_logout(IQN)
    result = asyncio.run(friendly.connector.detach(datera(), a, force=True))
    friendly.executor.assert_done()
    map_commands = [c for c in friendly.mpd.commands if " map " in c]
    assert map_commands and all(c.endswith(" mpatha") for c in map_commands)
    assert "disablequeueing map mpatha" in map_commands
    assert result.data_may_be_lost and friendly.kernel.dm_of(WWID) is not None


@pytest.mark.parametrize("names", [True, False], ids=["mpatha", "wwid"])
def test_a_failing_dmsetup_fails_the_forced_detach(friendly: Host, names: bool) -> None:
    friendly.kernel.user_friendly_names = names
    a = attach_datera(friendly)
    name = friendly.kernel.map_name(WWID)
    friendly.mpd.busy.add(name)
    friendly.executor.expect(["dmsetup", "remove", "--force", "--deferred", name],
                             returncode=1, stderr=f"device-mapper: remove ioctl on {name}  "
                             "failed: Device or resource busy\nCommand failed.")
    with pytest.raises(CommandFailed, match="dmsetup exited with 1"):
        asyncio.run(friendly.connector.detach(datera(), a, force=True))
    friendly.executor.assert_done()  # no logout: the detach stopped there
    assert len(slaves(friendly, WWID)) == 2


def test_the_fake_multipathd_knows_a_friendly_map_by_its_name_only(friendly: Host) -> None:
    attach_datera(friendly)
    assert asyncio.run(friendly.mpd.command(f"del map {WWID}", timeout=1)) == "fail\n"
    assert asyncio.run(friendly.mpd.command(f"disablequeueing map {WWID}", timeout=1)) == \
        "fail\n"
    assert friendly.kernel.dm_of(WWID) is not None
