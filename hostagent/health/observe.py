"""Gathering (I/O): what sysfs, multipathd and an optional O_DIRECT read show
for each attached volume."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from hostagent.connectors.devices import describe
from hostagent.connectors.fc import plan as fc_plan
from hostagent.errors import HostAgentError
from hostagent.health.verdict import (
    NO_SESSION,
    OFFLINE_STATES,
    UNSEEN,
    AttachmentObservation,
    MapObservation,
    PathObservation,
    ProbeResult,
)
from hostagent.host import fc, scsi
from hostagent.host.fs import SYS_BLOCK, HostFS, dev_node
from hostagent.host.multipath import MapInfo, MapPath, Multipath, map_wwid
from hostagent.models import (
    Attachment,
    Device,
    FcVolume,
    IscsiTarget,
    IscsiVolume,
    VolumeSpec,
)

# ---- gathering (I/O) ---------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    """Host-wide state read once per check."""

    sessions: tuple[scsi.IscsiSession, ...]
    hbas: tuple[fc.FcHba, ...]
    rports: tuple[fc.RemotePort, ...]
    maps: dict[str, MapInfo] | None  # None: multipathd did not answer
    multipathd_error: str | None
    # WWID -> dm-N of every multipath map, from sysfs (dm/uuid): a lookup per
    # attachment read every map's uuid, O(maps) each, O(N^2) a round.
    map_devices: dict[str, str]
    # H:C:T:L -> sd of every disk, one readlink each (a listing per path cost more).
    disks: dict[str, str]
    # sid -> the state of its connection, one read per session (K2's two sessions carry
    # every LUN's paths: a read per path repeated them hundreds of times).
    connection_states: dict[int, str | None]
    # (iqn, portal) -> session, per iface, made at the first lookup of this check
    # (once per attachment it was O(sessions) each).
    _by_iface: dict[str | None, dict[tuple[str, str], scsi.IscsiSession]] = field(
        default_factory=dict, compare=False, repr=False)

    def sessions_of(self, iface: str | None) -> dict[tuple[str, str], scsi.IscsiSession]:
        """The sessions by (IQN, portal), of `iface` only unless it is None."""
        index = self._by_iface.get(iface)
        if index is None:
            index = {(s.iqn, str(s.portal)): s for s in self.sessions
                     if iface is None or s.iface == iface}
            self._by_iface[iface] = index
        return index


def unique_targets(targets: Iterable[IscsiTarget]) -> list[IscsiTarget]:
    return list({(t.iqn, str(t.portal)): t for t in targets}.values())


class Observer:
    def __init__(self, fs: HostFS, multipath: Multipath) -> None:
        self.fs = fs
        self.multipath = multipath

    async def snapshot(self) -> Snapshot:
        maps: dict[str, MapInfo] | None = None
        error = None
        try:
            maps = await self.multipath.map_infos()
        except (HostAgentError, ValueError) as err:
            error = describe(err)
        sessions = tuple(scsi.iscsi_sessions(self.fs))
        block = self.fs.listdir(SYS_BLOCK)
        return Snapshot(sessions, tuple(fc.hbas(self.fs)), tuple(fc.remote_ports(self.fs)),
                        maps, error, self._map_devices(block), scsi.disks_by_hctl(self.fs, block),
                        {s.sid: scsi.connection_state(self.fs, s.sid) for s in sessions})

    def _map_devices(self, block_names: Iterable[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for name in block_names:
            if (wwid := map_wwid(self.fs, name)) is not None:
                found.setdefault(wwid, name)
        return found

    def observe(self, att: Attachment, spec: VolumeSpec, device: Device, snap: Snapshot,
                iface: str | None) -> AttachmentObservation:
        dm = snap.map_devices.get(device.wwn) if device.multipath else None
        info = (snap.maps or {}).get(device.wwn)
        place = _Placement(set(self.fs.listdir(f"{SYS_BLOCK}/{dm}/slaves")),
                           {mp.device: mp for mp in info.paths} if info else {}) if dm else None
        notes: tuple[str, ...] = ()
        if isinstance(spec, FcVolume):
            paths, notes = self._fc_paths(spec, device, snap, place)
            rports = tuple((r.name, r.port_name, r.port_state) for r in snap.rports
                           if r.port_name in spec.target_keys)
        else:
            paths, rports = self._iscsi_paths(spec, device, snap, iface, place), ()
        map_obs = MapObservation(
            expected=device.multipath, device=dm, features=info.features if info else None,
            size_bytes=scsi.size_bytes(self.fs, dm) if dm else None,
            multipathd_error=snap.multipathd_error if device.multipath else None)
        return AttachmentObservation(att.id, att.volume_id, att.protocol,
                                     dev_node(dm) if dm else device.path or "", device.wwn,
                                     tuple(paths), map_obs, rports, notes=notes)

    def _disk(self, snap: Snapshot, place: _Placement | None, label: str, target: str | None,
              hctl: str, *, session_state: str | None = None, connection_state: str | None = None,
              rport_state: str | None = None) -> PathObservation:
        sd = snap.disks.get(hctl)
        if sd is None:
            return PathObservation(label, target, hctl, missing_reason=f"no disk at {hctl}",
                                   session_state=session_state,
                                   connection_state=connection_state, rport_state=rport_state)
        state = scsi.device_state(self.fs, hctl)
        mp = place.by_dev.get(sd) if place else None
        return PathObservation(
            label, target, hctl, sd, session_state=session_state,
            connection_state=connection_state, rport_state=rport_state, sd_state=state,
            wwid=scsi.wwid(self.fs, hctl), size_bytes=scsi.size_bytes(self.fs, sd),
            # Holders decide only whether an offline disk may be replaced (plan_heal):
            # read for those alone. The repair reads them again before it deletes.
            holders=tuple(scsi.holders(self.fs, sd)) if state in OFFLINE_STATES else (),
            in_map=sd in place.slaves if place else None,
            dm_state=mp.dm_state if mp else None, checker=mp.checker if mp else None)

    def _iscsi_paths(self, vol: IscsiVolume, device: Device, snap: Snapshot,
                     iface: str | None, place: _Placement | None) -> list[PathObservation]:
        targets = unique_targets(device.iscsi_targets or vol.targets)
        if not device.multipath:  # single-path mode: only the path it uses is expected
            used = {(p.target, p.portal) for p in device.paths}
            targets = [t for t in targets if (t.iqn, str(t.portal)) in used]
        sessions = snap.sessions_of(iface)
        paths = []
        for t in targets:
            s = sessions.get((t.iqn, str(t.portal)))
            if s is None:
                paths.append(PathObservation(str(t.portal), t.iqn, missing_reason=NO_SESSION))
                continue
            hctl = f"{s.host}:0:{s.target_id}:{t.lun}"
            paths.append(self._disk(snap, place, str(t.portal), t.iqn, hctl,
                                    session_state=s.state,
                                    connection_state=snap.connection_states.get(s.sid)))
        return paths

    def _fc_paths(self, vol: FcVolume, device: Device, snap: Snapshot,
                  place: _Placement | None) -> tuple[list[PathObservation], tuple[str, ...]]:
        """The expected paths and notes. A target no online HBA sees is a path of its
        own only when nothing else is missing: with an HBA down it is that HBA's lost
        path again (in the K2 fabric every HBA is mapped to every target), not another."""
        todo = fc_plan(snap.hbas, snap.rports, vol)
        unseen = [m for m in todo.missing if m.endswith(UNSEEN)]
        missing = [m for m in todo.missing if not m.endswith(UNSEEN)]
        notes = tuple(unseen) if missing else ()
        if not missing:
            missing = unseen
        lun = fc.kernel_lun(vol.lun, vol.addressing_mode)
        paths = [self._disk(snap, place, pair.label, pair.rport.port_name,
                            f"{pair.rport.host}:{pair.rport.channel}:{pair.rport.target_id}:{lun}",
                            rport_state=pair.rport.port_state) for pair in todo.pairs]
        for entry in missing:
            label, _, why = entry.partition(": ")
            paths.append(PathObservation(label, None, missing_reason=why or entry))
        if not device.multipath:
            used = {p.hctl for p in device.paths}
            paths, notes = [p for p in paths if p.hctl in used], ()
        return paths, notes


@dataclass(frozen=True)
class _Placement:
    """Where a map's paths stand: its table's disks (sysfs) and multipathd's view."""

    slaves: set[str]
    by_dev: dict[str, MapPath]


class Prober:
    """One-block O_DIRECT reads, all of a round at once, on daemon threads: a read
    stuck on a queueing map cannot be cancelled, and must neither hold up another
    device's read (a round over a failed array would take N timeouts) nor keep the
    agent from exiting. While a device's read is still stuck, no second one is
    started on it."""

    def __init__(self, fs: HostFS, timeout: float, clock: Callable[[], float] = time.monotonic,
                 *, keep_threads: int = 256) -> None:
        self.fs = fs
        self.timeout = timeout
        self.clock = clock
        self._pending: dict[str, float] = {}  # device -> start of a read still stuck
        self._readers = _Readers(keep_threads)

    async def probe(self, dev: str) -> ProbeResult:
        return (await self.probe_all([dev]))[0]

    async def probe_all(self, devs: Sequence[str]) -> list[ProbeResult]:
        """A result per device in `devs`: one read per distinct device (two attachments
        of one volume share its map), all started at once and waited for together (one
        timer a round, not a wait_for per read: 256 of those cost ~0.1 s in the guest)."""
        loop = asyncio.get_running_loop()
        start = self.clock()
        results: dict[str, ProbeResult] = {}
        reads: dict[str, asyncio.Future[_Answer]] = {}
        for dev in dict.fromkeys(devs):
            stuck_since = self._pending.get(dev)
            if stuck_since is None:
                reads[dev] = self._read(dev, loop)
                continue
            waited = start - stuck_since
            results[dev] = ProbeResult(False, waited, True, f"an earlier read of {dev} has "
                                       f"not returned after {waited:.0f} s")
        if reads:
            await asyncio.wait(reads.values(), timeout=self.timeout)
        for dev, read in reads.items():
            if not read.done():
                results[dev] = ProbeResult(False, self.clock() - start, True,
                                           f"no answer within {self.timeout:g} s")
                continue
            value, finished = read.result()
            results[dev] = ProbeResult(True, finished - start) if isinstance(value, int) \
                else ProbeResult(False, finished - start, False, f"{dev}: {value.strerror}")
        return [results[d] for d in devs]

    def _read(self, dev: str, loop: asyncio.AbstractEventLoop) -> asyncio.Future[_Answer]:
        done: asyncio.Future[_Answer] = loop.create_future()
        self._pending[dev] = self.clock()

        def read() -> _Answer:
            try:
                value: int | OSError = self.fs.read_direct(dev)
            except OSError as err:
                value = err
            finally:
                self._pending.pop(dev, None)
            return value, self.clock()

        def answer(result: _Answer) -> None:
            # The loop may be gone by the time a stuck read returns (the agent stopped).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, done, result)

        self._readers.run(read, answer)
        return done


_Answer = tuple[int | OSError, float]  # what a read gave (bytes or its error), when it ended


class _Readers:
    """Daemon threads kept between rounds: starting one per read cost more CPU than
    the read (~7 ms each under emulation in the guest). Each thread serves one job at
    a time from its own inbox, so no read waits behind another; a thread whose read
    never returns is simply never idle again. At most `keep` idle threads stay (~17
    KiB of RSS each, measured: as many as the last round read devices)."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._idle: list[queue.SimpleQueue[_Job]] = []
        self._lock = threading.Lock()

    def run(self, read: Callable[[], _Answer], then: Callable[[_Answer], None]) -> None:
        """`read()` on an idle thread (a new one if none is), then `then(result)`."""
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name="probe reader",
                             daemon=True).start()
        inbox.put((read, then))

    def _serve(self, inbox: queue.SimpleQueue[_Job]) -> None:
        while True:
            read, then = inbox.get()
            result = read()
            with self._lock:  # idle again before the answer: the next round finds it
                stay = len(self._idle) < self._keep
                if stay:
                    self._idle.append(inbox)
            then(result)
            if not stay:
                return


_Job = tuple[Callable[[], _Answer], Callable[[_Answer], None]]


def _settle(future: asyncio.Future[_Answer], result: _Answer) -> None:
    if not future.done():
        future.set_result(result)
