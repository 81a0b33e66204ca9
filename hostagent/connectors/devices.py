"""Disks and multipath maps: the part of an attach that iSCSI and FC share.

Whatever the transport, a path ends as a SCSI device at some H:C:T:L. From
there both engines do the same: a targeted scan of the one LUN (a disk already
there is re-identified or replaced, never trusted blindly), the sd awaited by
udev event, every path agreeing on the WWID, the map built through multipathd;
and the mirror: flush, remove the map (retried while udev or blkid hold it),
delete the disks and wait until they are gone, forget the WWID.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from hostagent.connectors.base import Progress, refuse_single_path
from hostagent.errors import (
    DeviceBusy,
    DeviceTimeout,
    HostAgentError,
    HostCommandError,
    MultipathRequired,
    PathsDown,
    WwidInUse,
    WwnMismatch,
)
from hostagent.host import proc, scsi
from hostagent.host.clock import SYSTEM_CLOCK, Clock
from hostagent.host.fs import DISK_BY_ID, SYS_BLOCK, SYS_CLASS, UDEV_DB, HostFS, dev_node
from hostagent.host.multipath import DmMap, Multipath, map_at, map_wwid
from hostagent.host.udev import Udev, block_initialized
from hostagent.models import (
    NO_CLAIMS,
    READ_WRITE,
    Access,
    Claims,
    DetachResult,
    Device,
    IscsiTarget,
    PathInfo,
)

# multipathd answers "fail" to `add path` while its view of that sd name is stale: an
# event of the name's previous disk still queued, or the name still a path of a map it
# is taking down (libmultipath's cli_add_path; its recheck_wwid then drops the stale
# path and reads the disk again). Seen after a LUN id reuse. A refused disk is offered
# again after each pause, the map awaited meanwhile: 7.5 s in all.
ADD_PATH_PAUSES = (0.5, 1.0, 2.0, 4.0)
T = TypeVar("T")


async def off_loop(call: Callable[[], T], *, deadline: float, what: str) -> T:
    """`call()` (a blocking kernel call: an ioctl, a sysfs write that does SCSI I/O)
    on a thread of its own, awaited for at most `deadline` seconds; past it,
    DeviceTimeout. A thread cannot be cancelled: one that misses its deadline stays
    blocked in the kernel until the call returns, if ever (a flush of a map queueing
    with every path dead). So it is a daemon thread, not the default executor's:
    asyncio.run joins those workers at exit (a stuck one would hold SIGTERM for
    ever) and a few stuck ones would starve every other to_thread."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: Exception | None) -> None:
        if done.done():
            return  # its deadline passed: nobody waits any more
        if error is None:
            done.set_result(result)  # type: ignore[arg-type]
        else:
            done.set_exception(error)

    def run() -> None:
        try:
            outcome: tuple[T | None, Exception | None] = (call(), None)
        except Exception as err:  # handed to the waiter, which raises it
            outcome = (None, err)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name=f"hostagent: {what}", daemon=True).start()
    try:
        async with asyncio.timeout(deadline):
            return await done
    except TimeoutError:
        raise DeviceTimeout(f"{what} did not finish within {deadline:g} s (it may still "
                            "be blocked in the kernel)", waited_for=what,
                            timeout=deadline) from None


def note_left(err: BaseException, left: Sequence[str]) -> None:
    """What a rollback left on the host, and why, attached to the error the failed
    operation raises (details["left_on_host"]), for the caller and the record."""
    if not left:
        return
    if isinstance(err, HostAgentError):
        err.details["left_on_host"] = [*err.details.get("left_on_host", ()), *left]
    else:
        err.add_note("left on the host: " + "; ".join(left))


def refuse_if_left(left: Sequence[str]) -> None:
    """An undo with no error of its own (a recovery) that left something (an open
    map) is not done: DeviceBusy, naming what is left and why."""
    if left:
        raise DeviceBusy("the undo left part of the volume on the host: " + "; ".join(left),
                         left_on_host=list(left))


@dataclass(frozen=True)
class ScsiPath:
    info: PathInfo
    wwid: str
    created: bool  # False: the sd was already there and in use (never removed on rollback)


async def first_path(connects: Iterable[Callable[[], Awaitable[ScsiPath]]]
                     ) -> list[ScsiPath | BaseException]:
    """Single-path mode: try the paths in order and stop at the first that gives a
    device; the failures before it are kept for the `missing` report."""
    outcomes: list[ScsiPath | BaseException] = []
    for connect in connects:
        try:
            outcomes.append(await connect())
            break
        except HostAgentError as err:
            outcomes.append(err)
    return outcomes


def set_read_only(fs: HostFS, names: Iterable[str]) -> None:
    """Disks and maps set read-only (access_mode ro); the kernel's flag is read back,
    so a device that did not take it fails the attach. It blocks: the event loop
    calls set_read_only_off_loop."""
    for name in names:
        fs.set_read_only(dev_node(name))
        if fs.try_read(f"{SYS_BLOCK}/{name}/ro") != "1":
            raise HostCommandError(f"{name} did not become read-only", device=name)


async def set_read_only_off_loop(fs: HostFS, names: Sequence[str], *,
                                 deadline: float) -> None:
    """set_read_only in a thread: BLKROSET opens the device, which can wait on I/O."""
    await off_loop(lambda: set_read_only(fs, names), deadline=deadline,
                   what=f"setting {', '.join(names)} read-only")


def path_failures(labels: Sequence[str], outcomes: Sequence[object]
                  ) -> dict[str, HostAgentError]:
    """The paths that gave no disk, by label. Only a host failure is a missing path:
    any other exception is a bug, raised rather than reported."""
    failures: dict[str, HostAgentError] = {}
    for label, outcome in zip(labels, outcomes, strict=False):
        if isinstance(outcome, HostAgentError):
            failures[label] = outcome
        elif isinstance(outcome, BaseException):
            raise outcome
    return failures


class Devices:
    """Disks and maps on behalf of one engine (its timeouts, its multipath client)."""

    def __init__(self, fs: HostFS, udev: Udev, multipath: Multipath, *,
                 device_timeout: float, remove_attempts: int,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.fs = fs
        self.udev = udev
        self.multipath = multipath
        self.device_timeout = device_timeout
        self.remove_attempts = remove_attempts
        self.clock = clock

    # ---- one path ----------------------------------------------------------------
    async def scan(self, hctl: str, not_found: Callable[[], HostAgentError]) -> tuple[str, bool]:
        """The ready sd at `hctl` after a scan of exactly that LUN, and whether we made it.

        `not_found` is raised when the target answers the scan without the LUN.
        """
        host, channel, target_id, lun = (int(v) for v in hctl.split(":"))
        existing = scsi.disk_of(self.fs, hctl)
        if existing and await self._keep_existing(hctl, existing):
            return existing, False  # a live path of a map of this very LUN
        if self.fs.exists(f"{SYS_CLASS}/scsi_device/{hctl}"):
            # A leftover, possibly of a LUN id the array has since given to another
            # volume: its cached identity cannot be trusted, so it is scanned anew.
            await self._delete([hctl], "the leftover disk")
        # The scan waits for the target's answers (INQUIRY, REPORT LUNS, READ
        # CAPACITY): a target that stopped answering holds it for the SCSI timeouts.
        await self.run_blocking(functools.partial(scsi.scan_lun, self.fs, host, channel,
                                                  target_id, lun), f"the scan of {hctl}")
        return await self._wait_disk(hctl, not_found), True

    async def run_blocking(self, call: Callable[[], T], what: str) -> T:
        """A blocking kernel call off the event loop, within the device timeout."""
        return await off_loop(call, deadline=self.device_timeout, what=what)

    async def rescan(self, hctl: str) -> None:
        """VPD 0x83 and the capacity read again: I/O to the disk, off the loop."""
        await self.run_blocking(functools.partial(scsi.rescan_device, self.fs, hctl),
                                f"the rescan of {hctl}")

    async def _wait_disk(self, hctl: str, not_found: Callable[[], HostAgentError]) -> str:
        """The sd of a SCSI device the scan just made, once udev has processed it."""
        # The scan write is synchronous: no scsi_device now means the LUN is not there.
        if not self.fs.exists(f"{SYS_CLASS}/scsi_device/{hctl}"):
            raise not_found()

        def ready() -> str | None:
            sd = scsi.disk_of(self.fs, hctl)
            return sd if sd and block_initialized(self.fs, sd) else None

        return await self.udev.wait(ready, timeout=self.device_timeout,
                                    what=f"the disk of {hctl}")

    async def _keep_existing(self, hctl: str, sd: str) -> bool:
        """Whether a disk already at our H:C:T:L is a valid path to keep.

        A disk in a map is re-identified (rescan re-reads VPD 0x83): if the LUN now
        answers with another WWID, the map serves a volume the array no longer
        exports there. Such a stale map is removed (never if open) with its disk.
        """
        holders = [h for h in scsi.holders(self.fs, sd) if h.startswith("dm-")]
        if not holders:
            return False
        held_by = map_wwid(self.fs, holders[0])
        if held_by is None:  # LVM or another dm target on the raw disk: in use, not ours
            raise DeviceBusy(f"{sd} ({hctl}) is held by {holders[0]}, which is not a "
                             "multipath map: the disk is in use outside multipath", hctl=hctl,
                             holder=holders[0])
        await self.rescan(hctl)
        if scsi.wwid(self.fs, hctl) == held_by:
            return True
        try:
            await self.remove_map(held_by, holders[0], force=False)
        except DeviceBusy as err:
            raise DeviceBusy(f"{sd} ({hctl}) is held by map {held_by}, which is open, but "
                             "the LUN now reports another WWID: the array reused the LUN id "
                             "of a volume still in use on this host", hctl=hctl,
                             stale_map=held_by) from err
        return False

    def path_wwid(self, hctl: str, sd: str) -> str:
        wwid = scsi.wwid(self.fs, hctl)
        if wwid is None:
            raise WwnMismatch(f"{sd} ({hctl}) reports no NAA/EUI identifier", hctl=hctl)
        return wwid

    # ---- the device ----------------------------------------------------------------
    async def require_multipath(self, access: Access, multipath: bool) -> None:
        """An attach the controller enforces multipath on is refused, before anything is
        done on the host, unless it will get a map (os-brick's enforce_multipath)."""
        if not access.enforce_multipath:
            return
        refuse_single_path(multipath)
        try:
            await self.multipath.status()
        except HostAgentError as err:
            raise MultipathRequired(f"the controller enforces multipath (enforce_multipath) "
                                    f"and multipathd cannot build a map: {describe(err)}",
                                    reason="multipathd_unavailable") from err

    async def finish(self, paths: Sequence[ScsiPath], missing: tuple[str, ...], *,
                     multipath: bool, expected_wwn: str | None, progress: Progress,
                     iscsi_targets: tuple[IscsiTarget, ...] = (),
                     claims: Claims = NO_CLAIMS, access: Access = READ_WRITE) -> Device:
        """The Device of paths that all reach one volume: its map, or its one sd, set
        read-only if the access asks so. A WWID another live attachment's volume
        already has is refused, never merged into that volume's map: two volumes
        cannot be one."""
        wwid = agreed_wwid(paths, expected_wwn)
        if wwid in claims.wwids:
            raise WwidInUse(f"the volume reports WWID {wwid}, which another live attachment's "
                            "volume already has: refused, not merged into its map", wwid=wwid)
        infos = tuple(p.info for p in paths)
        disks = [p.info.device for p in paths]
        stable: str | None
        if multipath:
            progress("building the multipath map")
            name = await self.build_map(wwid, disks)
            stable = await self.map_by_id(name, wwid)
        else:
            name, disks = disks[0], disks[:1]
            stable = self.disk_by_id(name, wwid)
        if access.read_only:
            progress("setting the device read-only")
            await set_read_only_off_loop(self.fs, [*disks, name],
                                         deadline=self.device_timeout)
        return Device(dev_node(name), wwid, infos, multipath, missing,
                      scsi.size_bytes(self.fs, name), iscsi_targets, stable,
                      read_only=access.read_only, encrypted=access.encrypted)


    async def map_by_id(self, dm: str, wwid: str) -> str:
        """The map's udev link by its uuid, awaited: the name to give consumers."""
        link = f"{DISK_BY_ID}/dm-uuid-mpath-{wwid}"
        return await self.udev.wait(
            lambda: link if self.fs.realpath(link) == dev_node(dm) else None,
            timeout=self.device_timeout, what=f"{link} -> {dm}")

    def disk_by_id(self, sd: str, wwid: str) -> str | None:
        """A by-id link of a single-path disk, if udev made one (its rules skip disks
        that multipath claims)."""
        for name in (f"wwn-0x{wwid[1:]}", f"scsi-{wwid}"):
            link = f"{DISK_BY_ID}/{name}"
            if self.fs.realpath(link) == dev_node(sd):
                return link
        return None

    async def build_map(self, wwid: str, devices: list[str]) -> str:
        # Recording the WWID first makes any find_multipaths policy accept the paths.
        self.multipath.remember_wwid(wwid)
        what = f"multipath map {wwid} over {', '.join(devices)}"

        def ready() -> str | None:  # checked at each udev event: never a read of every map
            dm = self.multipath.map_holding(wwid, devices[:1])
            if dm is None or not block_initialized(self.fs, dm):
                return None
            slaves = set(self.fs.listdir(f"{SYS_BLOCK}/{dm}/slaves"))
            return dm if slaves >= set(devices) else None

        offer = devices
        for pause in (*ADD_PATH_PAUSES, None):
            refused = await self._add_paths(offer)
            if not refused:
                break
            if pause is None:
                if dm := ready():
                    return dm
                sd, err = next(iter(refused.items()))
                raise HostCommandError(
                    f"multipathd refused {sd} as a path of {wwid} {len(ADD_PATH_PAUSES) + 1} "
                    f"times in {sum(ADD_PATH_PAUSES):g} s: {err.message}", **err.details)
            with contextlib.suppress(DeviceTimeout):
                return await self.udev.wait(ready, timeout=pause, what=what)
            offer = list(refused)
        return await self.udev.wait(ready, timeout=self.device_timeout, what=what)

    async def _add_paths(self, devices: list[str]) -> dict[str, HostCommandError]:
        """Each disk offered to multipathd; the ones it refused (answered "fail")."""
        outcomes = await asyncio.gather(*(self.multipath.add_path(d) for d in devices),
                                        return_exceptions=True)
        refused = {}
        for sd, outcome in zip(devices, outcomes, strict=True):
            if isinstance(outcome, HostCommandError) and outcome.details.get("reply") == "fail":
                refused[sd] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
        return refused

    async def rollback(self, paths: Sequence[ScsiPath], *,
                       claims: Claims = NO_CLAIMS) -> list[str]:
        """Take away what an attach made: maps made only of its disks, then the disks.

        Never forced: only an explicit forced detach may take I/O from a holder. A
        map found open (LVM autoactivation, a mount, udev opened it meanwhile) is
        left as it is, with its disks (its slaves); what was left, and why, is
        returned for the caller's error (note_left).
        """
        left: list[str] = []
        kept: set[str] = set()
        created = [p for p in paths if p.created]
        for wwid in {p.wwid for p in paths if p.wwid} - claims.wwids:
            dm = self._map_over(wwid, paths)
            if dm and set(self.fs.listdir(f"{SYS_BLOCK}/{dm}/slaves")) <= {
                    p.info.device for p in created}:
                try:
                    await self.remove_map(wwid, dm, force=False)
                except DeviceBusy as err:
                    left.append(f"{err.message}: left as it is, with its disks")
                    kept.add(wwid)
                    continue
                self.multipath.forget_wwid(wwid)
        for wwid in dict.fromkeys(p.wwid for p in created if p.wwid not in kept):
            await self.delete_disks([p.info for p in created if p.wwid == wwid], wwid,
                                    claims=claims, warnings=left)
        return left

    def forget_unmapped(self, paths: Sequence[ScsiPath]) -> None:
        """Forget the WWIDs of paths whose map is gone (a recovery's last step)."""
        for wwid in {p.wwid for p in paths if p.wwid}:
            if self._map_over(wwid, paths) is None:
                self.multipath.forget_wwid(wwid)

    def _map_over(self, wwid: str, paths: Sequence[ScsiPath]) -> str | None:
        """dm-N of `wwid`'s map, looked up through the disks of its paths first."""
        return self.multipath.map_device(wwid, [p.info.device for p in paths if p.wwid == wwid])

    def current(self, device: Device) -> Device | None:
        """An attached volume's device as the host has it now, its names read again, or
        None when it is gone. Never trusted from the record: a map rebuilt while the
        agent was down has another dm-N, and a recorded H:C:T:L whose disk reports
        another WWID (or none) is no path of the volume any more."""
        if device.path is None:  # found gone before: its recorded names prove nothing
            return None
        dm = self.map_of(device) if device.multipath else None
        if device.multipath and dm is None:
            return None  # gone: no disk of it need be read
        paths = tuple(replace(p, device=sd) for p in device.paths
                      if (sd := scsi.disk_of(self.fs, p.hctl))
                      and scsi.wwid(self.fs, p.hctl) == device.wwn)
        if dm is not None:
            return replace(device, path=dev_node(dm), paths=paths)
        return replace(device, path=dev_node(paths[0].device), paths=paths) if paths else None

    def map_slaves(self, device: Device) -> list[str]:
        """The sd names the volume's map holds now (paths that came back included)."""
        dm = self.map_of(device)
        return self.fs.listdir(f"{SYS_BLOCK}/{dm}/slaves") if dm else []

    def map_of(self, device: Device) -> str | None:
        """The volume's map now, looked for through its recorded disks first."""
        return self.multipath.map_device(device.wwn, [p.device for p in device.paths])

    # ---- detach --------------------------------------------------------------------
    async def release(self, device: Device, paths: Sequence[PathInfo], *, force: bool,
                      progress: Progress, claims: Claims = NO_CLAIMS) -> DetachResult:
        """Flush and remove the volume's map, forget its WWID, delete `paths`' disks."""
        warnings: list[str] = []
        lost = False
        if device.wwn in claims.wwids:
            # Another live attachment has this volume now: its map and disks are its.
            warnings.append(f"{device.wwn} belongs to another live attachment: left to it")
            return DetachResult(False, tuple(warnings))
        # Also in single-path mode: multipathd may have built a map on our disk
        # by itself (find_multipaths no); the disk cannot go while it holds it.
        # Found by WWID now: the recorded dm-N or sdX may be another volume's by now.
        m = self.multipath.find(device.wwn, [p.device for p in device.paths])
        target = dev_node(m.dm) if m else self._own_disk(device, paths, claims)
        if force and m:
            await self._stop_queueing(m, warnings)  # before the flush, which may block
        if target:
            progress("flushing")
            lost |= await self.flush(target, force, warnings)
        if m:
            progress("removing the multipath map")
            lost |= await self.remove_map(m.wwid, m.dm, force=force, warnings=warnings)
        if device.multipath:
            self.multipath.forget_wwid(device.wwn)
        progress("removing the disks")
        await self.delete_disks(list(paths), device.wwn, claims=claims, warnings=warnings)
        return DetachResult(lost, tuple(warnings))

    def _own_disk(self, device: Device, paths: Sequence[PathInfo],
                  claims: Claims) -> str | None:
        """Single-path mode: the disk now at one of the volume's H:C:T:L that reports
        its WWID right now (the recorded sd name may be another volume's disk)."""
        if device.multipath:
            return None  # its map is gone: its disks are only deleted, never flushed
        for p in paths:
            if p.hctl in claims.hctls or scsi.wwid(self.fs, p.hctl) != device.wwn:
                continue
            if sd := scsi.disk_of(self.fs, p.hctl):
                return dev_node(sd)
        return None

    async def _stop_queueing(self, m: DmMap, warnings: list[str]) -> None:
        try:
            await self.multipath.disable_queueing(m)
        except HostCommandError as err:
            warnings.append(f"queueing of map {m.name} ({m.dm}) could not be turned off "
                            f"({describe(err)}): its flush may wait until its deadline")

    async def flush(self, dev: str, force: bool, warnings: list[str]) -> bool:
        """BLKFLSBUF (a sync of a file system mounted on it) off the event loop. It
        never returns on a map queueing with every path dead: past the device
        timeout a plain detach is refused (nothing was torn down yet), a forced one
        goes on with data_may_be_lost. The flush's thread stays blocked meanwhile."""
        if not self.fs.exists(dev):
            return False
        try:
            await self.run_blocking(functools.partial(self.fs.flush_buffers, dev),
                                    f"the flush of {dev}")
        except (OSError, DeviceTimeout) as err:
            why = err.message if isinstance(err, DeviceTimeout) else f"failed: {err}"
            if not force:
                raise DeviceBusy(f"flushing {dev}: {why}", device=dev) from err
            warnings.append(f"flushing {dev}: {why}; forced on: data may be lost")
            return True
        return False

    async def remove_map(self, wwid: str, dm: str, *, force: bool,
                         warnings: list[str] | None = None) -> bool:
        """Remove `wwid`'s map, which is `dm` now, by the name device-mapper knows it
        by (read again here, whatever user_friendly_names says). Only an explicit
        forced detach forces it (`force`: its caller has turned queueing off)."""
        m = map_at(self.fs, dm)
        if m is None or m.wwid != wwid:
            return False  # gone already; `dm` may be another map by now
        for attempt in range(self.remove_attempts):
            try:
                await self.multipath.remove_map(m)
                break
            except DeviceBusy:
                if attempt + 1 < self.remove_attempts:
                    await self.clock.sleep(0.2 * (attempt + 1))  # udev/blkid hold it briefly
        else:
            held = self.held_by(dm)
            if not force:
                raise DeviceBusy(f"multipath map {m.name} ({dm}) stays in use{held}",
                                 wwid=wwid, dm=dm, map=m.name)
            await self.multipath.force_remove(m)
            if warnings is not None:
                warnings.append(f"map {m.name} ({dm}) was in use{held}: its I/O now fails "
                                "and it goes when its holder closes it; data may be lost")
            # No wait for the map: it stays until its holder closes it, but it holds
            # no disk any more, so the paths and sessions go now.
            await self.udev.wait(lambda: not self.fs.listdir(f"{SYS_BLOCK}/{dm}/slaves") or None,
                                 timeout=self.device_timeout, what=f"map {m.name} to let go")
            return True
        await self.wait_gone([f"{SYS_BLOCK}/{dm}"], f"map {m.name}")
        return False

    def held_by(self, dm: str) -> str:
        """Who holds a map open, in words for an answer."""
        pids = proc.openers(self.fs, dev_node(dm))
        devno = (self.fs.try_read(f"{SYS_BLOCK}/{dm}/dev") or "").strip()
        mounts = proc.mount_points(self.fs, devno) if devno else []
        parts = ([f"processes {', '.join(map(str, pids))}"] if pids else []) + \
            ([f"mounted at {', '.join(mounts)}"] if mounts else [])
        return f" (held by {'; '.join(parts)})" if parts else ""

    async def delete_disks(self, paths: Sequence[PathInfo], wwid: str, *,
                           claims: Claims = NO_CLAIMS,
                           warnings: list[str] | None = None) -> None:
        """Delete the disks at `paths` that still report `wwid` there, read again right
        now: H:C:T:L and sd names are reused, so another volume's disk may sit where
        ours was. A disk another live attachment has is never deleted."""
        gone = []
        for p in paths:
            if not self.fs.exists(f"{SYS_CLASS}/scsi_device/{p.hctl}"):
                continue
            now = scsi.wwid(self.fs, p.hctl) or ""
            if p.hctl in claims.hctls:
                skipped = f"{p.hctl} is another live attachment's disk: left alone"
            elif now != wwid:
                skipped = f"{p.hctl} now reports {now or 'no WWID'}, not {wwid}: left alone"
            else:
                gone.append(p.hctl)
                continue
            if warnings is not None:
                warnings.append(skipped)
        await self._delete(gone, "the disks")

    async def _delete(self, hctls: Sequence[str], what: str) -> None:
        """Delete SCSI devices and wait until udev has processed their removal: the
        kernel gives the next disk the same sd name and device number, so a database
        entry left from the old one would pass for the new one's."""
        entries = []
        for hctl in hctls:
            sd = scsi.disk_of(self.fs, hctl)
            dev = self.fs.try_read(f"{SYS_CLASS}/block/{sd}/dev") if sd else None
            if dev:
                entries.append(f"{UDEV_DB}/b{dev.strip()}")
            # Synchronous in the kernel, and the sd driver's removal syncs the disk's
            # cache first (SYNCHRONIZE CACHE): it waits as long as the disk does.
            await self.run_blocking(functools.partial(scsi.delete_device, self.fs, hctl),
                                    f"the removal of {hctl}")
        await self.wait_gone([*(f"{SYS_CLASS}/scsi_device/{h}" for h in hctls), *entries], what)

    async def wait_gone(self, sys_paths: list[str], what: str) -> None:
        await self.udev.wait(lambda: not any(self.fs.exists(p) for p in sys_paths) or None,
                             timeout=self.device_timeout, what=f"{what} to go away")

    # ---- extend --------------------------------------------------------------------
    async def resize(self, device: Device, paths: Sequence[PathInfo],
                     missing: Sequence[str]) -> int:
        """Rescan every path, then grow the map; refused while any path is down."""
        down = [p.hctl for p in paths if scsi.device_state(self.fs, p.hctl) != "running"]
        if down or missing:
            raise PathsDown("every path must be up to resize safely", down=down,
                            missing=list(missing))
        for p in paths:
            await self.rescan(p.hctl)
        if not device.multipath:
            return scsi.size_bytes(self.fs, paths[0].device)
        m = self.multipath.find(device.wwn, [p.device for p in paths])
        if m is None:
            raise HostCommandError(f"map {device.wwn} vanished before resize")
        await self.multipath.resize(m)
        dm = self.map_of(device)
        if dm is None:
            raise HostCommandError(f"map {device.wwn} vanished during resize")
        return scsi.size_bytes(self.fs, dm)


def agreed_wwid(paths: Sequence[ScsiPath], expected: str | None) -> str:
    wwids = {p.wwid for p in paths}
    if len(wwids) > 1:
        raise WwnMismatch("the paths of one volume report different WWNs",
                          paths={p.info.hctl: p.wwid for p in paths})
    wwid = wwids.pop()
    if expected:
        want = expected.lower().removeprefix("naa.")
        if wwid not in (want, "3" + want):
            raise WwnMismatch(f"the volume reports WWN {wwid}, expected {expected}",
                              wwid=wwid, expected=expected)
    return wwid


def describe(err: BaseException) -> str:
    if isinstance(err, HostAgentError):
        return f"{err.code}: {err.message}"
    return f"{type(err).__name__}: {err}"
