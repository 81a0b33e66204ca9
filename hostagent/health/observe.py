"""Gathering (I/O): what sysfs, multipathd and an optional O_DIRECT read show
for each attached volume."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from hostagent.connection_info import parse
from hostagent.connectors.devices import describe
from hostagent.connectors.fc import plan as fc_plan
from hostagent.errors import HostAgentError
from hostagent.health.verdict import (
    NO_SESSION,
    UNSEEN,
    AttachmentObservation,
    MapObservation,
    PathObservation,
    ProbeResult,
)
from hostagent.host import fc, scsi
from hostagent.host.fs import SYS_BLOCK, HostFS, dev_node
from hostagent.host.multipath import MapInfo, MapPath, Multipath
from hostagent.models import (
    Attachment,
    Device,
    FcVolume,
    IscsiTarget,
    IscsiVolume,
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
    # WWID -> dm-N of every multipath map, from sysfs (dm/uuid), read once per check:
    # a lookup per attachment read every map's uuid, O(maps) each, O(N^2) a round.
    # None: not read (each attachment's map is looked up on its own).
    map_devices: dict[str, str] | None = None
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
        return Snapshot(tuple(scsi.iscsi_sessions(self.fs)), tuple(fc.hbas(self.fs)),
                        tuple(fc.remote_ports(self.fs)), maps, error, self._map_devices())

    def _map_devices(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for name in self.fs.listdir(SYS_BLOCK):
            if name.startswith("dm-"):
                uuid = self.fs.try_read(f"{SYS_BLOCK}/{name}/dm/uuid") or ""
                if uuid.startswith("mpath-"):
                    found.setdefault(uuid[len("mpath-"):], name)
        return found

    def _map_device(self, wwid: str, snap: Snapshot) -> str | None:
        if snap.map_devices is None:
            return self.multipath.map_device(wwid)
        return snap.map_devices.get(wwid)

    def observe(self, att: Attachment, device: Device, snap: Snapshot,
                iface: str | None) -> AttachmentObservation:
        spec = parse(att.connection_info)
        dm = self._map_device(device.wwn, snap) if device.multipath else None
        info = (snap.maps or {}).get(device.wwn)
        slaves = set(self.fs.listdir(f"{SYS_BLOCK}/{dm}/slaves")) if dm else set()
        notes: tuple[str, ...] = ()
        if isinstance(spec, FcVolume):
            paths, notes = self._fc_paths(spec, device, snap)
            rports = tuple((r.name, r.port_name, r.port_state) for r in snap.rports
                           if r.port_name in spec.target_keys)
        else:
            paths, rports = self._iscsi_paths(spec, device, snap, iface), ()
        if dm:
            by_dev = {mp.device: mp for mp in info.paths} if info else {}
            paths = [_in_map(p, slaves, by_dev.get(p.device or "")) for p in paths]
        map_obs = MapObservation(
            expected=device.multipath, device=dm, features=info.features if info else None,
            size_bytes=scsi.size_bytes(self.fs, dm) if dm else None,
            multipathd_error=snap.multipathd_error if device.multipath else None)
        return AttachmentObservation(att.id, att.volume_id, att.protocol,
                                     dev_node(dm) if dm else device.path, device.wwn,
                                     tuple(paths), map_obs, rports, notes=notes)

    def _disk(self, label: str, target: str | None, hctl: str, *,
              session_state: str | None = None, connection_state: str | None = None,
              rport_state: str | None = None) -> PathObservation:
        base = PathObservation(label, target, hctl, session_state=session_state,
                               connection_state=connection_state, rport_state=rport_state)
        sd = scsi.disk_of(self.fs, hctl)
        if sd is None:
            return replace(base, missing_reason=f"no disk at {hctl}")
        return replace(base, device=sd, sd_state=scsi.device_state(self.fs, hctl),
                       wwid=scsi.wwid(self.fs, hctl), size_bytes=scsi.size_bytes(self.fs, sd),
                       holders=tuple(scsi.holders(self.fs, sd)))

    def _iscsi_paths(self, vol: IscsiVolume, device: Device, snap: Snapshot,
                     iface: str | None) -> list[PathObservation]:
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
            paths.append(self._disk(str(t.portal), t.iqn, f"{s.host}:0:{s.target_id}:{t.lun}",
                                    session_state=s.state,
                                    connection_state=scsi.connection_state(self.fs, s.sid)))
        return paths

    def _fc_paths(self, vol: FcVolume, device: Device, snap: Snapshot
                  ) -> tuple[list[PathObservation], tuple[str, ...]]:
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
        paths = [self._disk(pair.label, pair.rport.port_name,
                            f"{pair.rport.host}:{pair.rport.channel}:{pair.rport.target_id}:{lun}",
                            rport_state=pair.rport.port_state) for pair in todo.pairs]
        for entry in missing:
            label, _, why = entry.partition(": ")
            paths.append(PathObservation(label, None, missing_reason=why or entry))
        if not device.multipath:
            used = {p.hctl for p in device.paths}
            paths, notes = [p for p in paths if p.hctl in used], ()
        return paths, notes


def _in_map(p: PathObservation, slaves: set[str], mp: MapPath | None) -> PathObservation:
    """The path with its place in the map: in the table (sysfs) and multipathd's view."""
    if p.device is None:
        return p
    if mp is None:
        return replace(p, in_map=p.device in slaves)
    return replace(p, in_map=p.device in slaves, dm_state=mp.dm_state, checker=mp.checker)


class Prober:
    """One-block O_DIRECT reads, each on a daemon thread of its own: a read stuck
    on a queueing map cannot be cancelled, and must neither hold a worker pool
    nor keep the agent from exiting. While a device's read is still stuck, no
    second one is started on it."""

    def __init__(self, fs: HostFS, timeout: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.fs = fs
        self.timeout = timeout
        self.clock = clock
        self._pending: dict[str, float] = {}  # device -> start of a read still stuck

    async def probe(self, dev: str) -> ProbeResult:
        started = self._pending.get(dev)
        if started is not None:
            waited = self.clock() - started
            return ProbeResult(False, waited, True, f"an earlier read of {dev} has not "
                               f"returned after {waited:.0f} s")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        start = self.clock()
        self._pending[dev] = start

        def read() -> None:
            try:
                result: int | BaseException = self.fs.read_direct(dev)
            except OSError as err:
                result = err
            finally:
                self._pending.pop(dev, None)
            # The loop may be gone by the time a stuck read returns (the agent stopped).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, done, result)

        threading.Thread(target=read, name=f"probe {dev}", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), self.timeout)
        except TimeoutError:
            return ProbeResult(False, self.clock() - start, True,
                               f"no answer within {self.timeout:g} s")
        except OSError as err:
            return ProbeResult(False, self.clock() - start, False, f"{dev}: {err.strerror}")
        return ProbeResult(True, self.clock() - start)


def _settle(future: asyncio.Future[int], result: int | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


