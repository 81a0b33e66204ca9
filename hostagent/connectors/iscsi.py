"""The native iSCSI engine: connection_info in, one healthy multipath device out.

Attach: node records under hostagent's own iface (static, or SendTargets when
the controller asked for discovery), parallel logins with bounded timeouts,
a targeted `C T L` scan of the one LUN on each session, the sd awaited by udev
event, WWNs checked, and the map built through multipathd's socket. Detach is
the mirror and logs out only sessions that no other LUN still uses.
Host processes: `iscsiadm` only (node records, login, logout, discovery).
"""

from __future__ import annotations

import asyncio
import platform
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hostagent.connectors.base import Progress, no_progress
from hostagent.errors import (
    AuthenticationFailed,
    DeviceBusy,
    HostAgentError,
    HostCommandError,
    InvalidRequest,
    LoginFailed,
    LunNotFound,
    PathsDown,
    WwnMismatch,
)
from hostagent.host import scsi
from hostagent.host.executor import Executor
from hostagent.host.fs import ETC_ISCSI, SYS_BLOCK, SYS_CLASS, HostFS, dev_node
from hostagent.host.iscsiadm import Iscsiadm, chap_settings
from hostagent.host.multipath import Multipath, MultipathdClient
from hostagent.host.udev import Udev, block_initialized
from hostagent.locks import TargetLocks
from hostagent.models import (
    Chap,
    DetachResult,
    Device,
    IscsiTarget,
    IscsiVolume,
    PathInfo,
    VolumeSpec,
)

INITIATOR_FILE = f"{ETC_ISCSI}/initiatorname.iscsi"


@dataclass(frozen=True)
class IscsiOptions:
    iface: str = "hostagent"
    login_timeout: int = 5  # s per login attempt: a dead portal costs at most 2 of them
    login_attempts: int = 2
    device_timeout: float = 30.0  # for an sd or a map to appear once the kernel has the LUN
    command_timeout: float = 30.0  # iscsiadm (but logins) and multipathd commands
    remove_attempts: int = 3  # a map briefly held open (udev, blkid) is retried this often
    my_ip: str | None = None


@dataclass(frozen=True)
class _Path:
    info: PathInfo
    wwid: str
    created: bool  # False: the sd was already there and in use (never removed on rollback)


def _expect_iscsi(spec: VolumeSpec) -> IscsiVolume:
    if not isinstance(spec, IscsiVolume):
        raise InvalidRequest("connection_info.driver_volume_type",
                             "the iSCSI engine got a non-iSCSI volume")
    return spec


def _unique(targets: Iterable[IscsiTarget]) -> tuple[IscsiTarget, ...]:
    return tuple(dict.fromkeys(targets))


class IscsiConnector:
    def __init__(self, executor: Executor, fs: HostFS, udev: Udev,
                 multipathd: MultipathdClient, *, locks: TargetLocks | None = None,
                 options: IscsiOptions | None = None) -> None:
        self.fs = fs
        self.udev = udev
        self.options = options or IscsiOptions()
        self.iscsiadm = Iscsiadm(executor, fs, iface=self.options.iface,
                                 timeout=self.options.command_timeout)
        self.multipath = Multipath(multipathd, fs, executor=executor,
                                   timeout=self.options.command_timeout)
        self.locks = locks or TargetLocks()

    # ---- attach ----------------------------------------------------------------
    async def attach(self, spec: VolumeSpec, *, multipath: bool,
                     progress: Progress = no_progress) -> Device:
        vol = _expect_iscsi(spec)
        await self.iscsiadm.ensure_iface()
        targets = await self._resolve(vol, multipath, progress)
        async with self.locks.hold(t.iqn for t in targets):
            progress("logging in")
            try:
                if multipath:
                    outcomes = await asyncio.gather(
                        *(self._connect(t, vol, progress) for t in targets),
                        return_exceptions=True)
                else:
                    outcomes = await self._connect_first(targets, vol, progress)
            except BaseException:
                # Cut off mid-login (a timeout, a shutdown): what exists is found anew.
                await self._undo(vol, targets)
                raise
            paths = [o for o in outcomes if isinstance(o, _Path)]
            failures = {str(t.portal): o for t, o in zip(targets, outcomes, strict=False)
                        if isinstance(o, BaseException)}
            try:
                return await self._finish(vol, targets, paths, failures, multipath, progress)
            except BaseException:
                await self._rollback(targets, paths)
                raise

    async def _resolve(self, vol: IscsiVolume, multipath: bool,
                       progress: Progress) -> tuple[IscsiTarget, ...]:
        if not (vol.discover and multipath):
            return _unique(vol.targets)
        progress("discovering")
        first = vol.targets[0]
        found = await self.iscsiadm.discover(first.portal, vol.discovery_chap)
        targets = _unique(IscsiTarget(d.portal, d.iqn, first.lun)
                          for d in found if d.iqn == first.iqn)
        if not targets:
            raise LoginFailed(f"SendTargets on {first.portal} does not list {first.iqn}",
                              portal=str(first.portal), iqn=first.iqn,
                              listed=sorted({d.iqn for d in found}))
        return targets

    async def _connect_first(self, targets: Sequence[IscsiTarget], vol: IscsiVolume,
                             progress: Progress) -> list[_Path | BaseException]:
        """Single-path mode: the first portal that gives a device, in the given order."""
        outcomes: list[_Path | BaseException] = []
        for target in targets:
            try:
                outcomes.append(await self._connect(target, vol, progress))
                break
            except HostAgentError as err:
                outcomes.append(err)
        return outcomes

    async def _connect(self, target: IscsiTarget, vol: IscsiVolume,
                       progress: Progress) -> _Path:
        iqn, portal = target.iqn, target.portal
        session = self._session(iqn, str(portal))
        if session is None:
            settings = self._node_settings(vol.chap)
            if self.iscsiadm.has_node(iqn, portal):
                # Our record from an earlier attach: credentials may have changed.
                await self.iscsiadm.update_node(iqn, portal, settings)
            else:
                await self.iscsiadm.create_node(iqn, portal, settings)
            await self.iscsiadm.login(
                iqn, portal, mutual_chap=bool(vol.chap and vol.chap.mutual),
                timeout=self.options.login_timeout * self.options.login_attempts + 15)
            session = self._session(iqn, str(portal))
            if session is None:
                raise LoginFailed(f"logged in to {iqn} at {portal} but the kernel shows no "
                                  "session", iqn=iqn, portal=str(portal))
        hctl = f"{session.host}:0:{session.target_id}:{target.lun}"
        progress(f"scanning {hctl} ({portal})")
        sd, created = await self._scan(hctl, session.host, session.target_id, target)
        progress(f"disk {sd} ready ({portal})")
        wwid = scsi.wwid(self.fs, hctl)
        if wwid is None:
            raise WwnMismatch(f"{sd} ({hctl}) reports no NAA/EUI identifier", hctl=hctl)
        return _Path(PathInfo(sd, hctl, str(portal), iqn), wwid, created)

    def _node_settings(self, chap: Chap | None) -> dict[str, str]:
        opts = self.options
        return {
            "node.startup": "manual",
            "node.session.scan": "manual",  # we scan exactly our LUN, never the whole target
            "node.conn[0].timeo.login_timeout": str(opts.login_timeout),
            "node.session.initial_login_retry_max": str(opts.login_attempts),
            **chap_settings(chap, "node.session.auth"),
        }

    def _session(self, iqn: str, portal: str) -> scsi.IscsiSession | None:
        for s in scsi.iscsi_sessions(self.fs):
            if s.iqn == iqn and str(s.portal) == portal and s.iface == self.options.iface:
                return s
        return None

    async def _scan(self, hctl: str, host: int, target_id: int,
                    target: IscsiTarget) -> tuple[str, bool]:
        existing = scsi.disk_of(self.fs, hctl)
        if existing and await self._keep_existing(hctl, existing):
            return existing, False  # a live path of a map of this very LUN
        if self.fs.exists(f"{SYS_CLASS}/scsi_device/{hctl}"):
            # A leftover, possibly of a LUN id the array has since given to another
            # volume: its cached identity cannot be trusted, so it is scanned anew.
            scsi.delete_device(self.fs, hctl)
        scsi.scan_lun(self.fs, host, 0, target_id, target.lun)
        if not self.fs.exists(f"{SYS_CLASS}/scsi_device/{hctl}"):
            raise LunNotFound(f"{target.iqn} at {target.portal} has no LUN {target.lun} "
                              "for this initiator", iqn=target.iqn, portal=str(target.portal),
                              lun=target.lun)

        def ready() -> str | None:
            sd = scsi.disk_of(self.fs, hctl)
            return sd if sd and block_initialized(self.fs, sd) else None

        sd = await self.udev.wait(ready, timeout=self.options.device_timeout,
                                  what=f"the disk of {hctl}")
        return sd, True

    async def _keep_existing(self, hctl: str, sd: str) -> bool:
        """Whether a disk already at our H:C:T:L is a valid path to keep.

        A disk in a map is re-identified (rescan re-reads VPD 0x83): if the LUN now
        answers with another WWID, the map serves a volume the array no longer
        exports there. Such a stale map is removed (never if open) with its disk.
        """
        holders = [h for h in scsi.holders(self.fs, sd) if h.startswith("dm-")]
        if not holders:
            return False
        map_wwid = (self.fs.try_read(f"{SYS_BLOCK}/{holders[0]}/dm/uuid") or "")
        map_wwid = map_wwid.removeprefix("mpath-")
        scsi.rescan_device(self.fs, hctl)
        if scsi.wwid(self.fs, hctl) == map_wwid:
            return True
        try:
            await self._remove_map(map_wwid, holders[0], force=False)
        except DeviceBusy as err:
            raise DeviceBusy(f"{sd} ({hctl}) is held by map {map_wwid}, which is open, but "
                             "the LUN now reports another WWID: the array reused the LUN id "
                             "of a volume still in use on this host", hctl=hctl,
                             stale_map=map_wwid) from err
        return False

    async def _finish(self, vol: IscsiVolume, targets: tuple[IscsiTarget, ...],
                      paths: list[_Path], failures: dict[str, BaseException],
                      multipath: bool, progress: Progress) -> Device:
        if not paths:
            raise _no_path_error(vol, failures)
        wwid = _agreed_wwid(paths, vol.expected_wwn)
        missing = tuple(f"{portal}: {_describe(err)}" for portal, err in failures.items())
        infos = tuple(p.info for p in paths)
        if not multipath:
            sd = paths[0].info.device
            return Device(dev_node(sd), wwid, infos, False, missing,
                          scsi.size_bytes(self.fs, sd), targets)
        progress("building the multipath map")
        dm = await self._build_map(wwid, [p.info.device for p in paths])
        return Device(dev_node(dm), wwid, infos, True, missing,
                      scsi.size_bytes(self.fs, dm), targets)

    async def _build_map(self, wwid: str, devices: list[str]) -> str:
        # Recording the WWID first makes any find_multipaths policy accept the paths.
        self.multipath.remember_wwid(wwid)
        await asyncio.gather(*(self.multipath.add_path(d) for d in devices))

        def ready() -> str | None:
            dm = self.multipath.map_device(wwid)
            if dm is None or not block_initialized(self.fs, dm):
                return None
            slaves = set(self.fs.listdir(f"{SYS_BLOCK}/{dm}/slaves"))
            return dm if slaves >= set(devices) else None

        return await self.udev.wait(ready, timeout=self.options.device_timeout,
                                    what=f"multipath map {wwid} over {', '.join(devices)}")

    async def _rollback(self, targets: Sequence[IscsiTarget], paths: list[_Path]) -> None:
        created = [p.info for p in paths if p.created]
        for wwid in {p.wwid for p in paths if p.wwid}:
            dm = self.multipath.map_device(wwid)
            if dm and set(self.fs.listdir(f"{SYS_BLOCK}/{dm}/slaves")) <= {
                    p.device for p in created}:
                await self._remove_map(wwid, dm, force=True)
                self.multipath.forget_wwid(wwid)
        await self._delete_disks(created)
        await self._release_sessions(targets)

    # ---- recovery after a crash ---------------------------------------------------
    async def recover(self, spec: VolumeSpec) -> None:
        """Undo an attach the agent did not live to finish, knowing only its spec.

        Whatever of this volume's LUN sits on hostagent's own sessions is taken
        away (its map, its disks), then every session and node record of the
        volume's targets that no other LUN uses. Others' sessions are not looked at.
        """
        vol = _expect_iscsi(spec)
        async with self.locks.hold(vol.iqns):
            await self._undo(vol, vol.targets)

    async def _undo(self, vol: IscsiVolume, targets: Sequence[IscsiTarget]) -> None:
        """What exists of `vol` on our sessions goes: its disks and map, then the
        sessions and node records of its targets that no other LUN uses."""
        lun_of = {t.iqn: t.lun for t in vol.targets}
        sessions = [s for s in scsi.iscsi_sessions(self.fs)
                    if s.iface == self.options.iface and s.iqn in lun_of]
        paths = []
        for s in sessions:
            hctl = f"{s.host}:0:{s.target_id}:{lun_of[s.iqn]}"
            if self.fs.exists(f"{SYS_CLASS}/scsi_device/{hctl}"):
                info = PathInfo(scsi.disk_of(self.fs, hctl) or "", hctl, str(s.portal), s.iqn)
                paths.append(_Path(info, scsi.wwid(self.fs, hctl) or "", True))
        await self._rollback(_unique([
            *targets,
            *(IscsiTarget(s.portal, s.iqn, lun_of[s.iqn]) for s in sessions),
            *(IscsiTarget(p, iqn, lun) for iqn, lun in lun_of.items()
              for p in self.iscsiadm.node_portals(iqn))]), paths)
        for wwid in {p.wwid for p in paths if p.wwid}:
            if self.multipath.map_device(wwid) is None:
                self.multipath.forget_wwid(wwid)

    def present(self, device: Device) -> bool:
        """Whether an attached volume's device is still on the host, as the same volume."""
        if device.multipath:
            return self.multipath.map_device(device.wwn) is not None
        return any(scsi.disk_of(self.fs, p.hctl) == p.device
                   and scsi.wwid(self.fs, p.hctl) == device.wwn for p in device.paths)

    # ---- detach ----------------------------------------------------------------
    async def detach(self, spec: VolumeSpec, device: Device, *, force: bool = False,
                     progress: Progress = no_progress) -> DetachResult:
        vol = _expect_iscsi(spec)
        targets = device.iscsi_targets or _unique(vol.targets)
        async with self.locks.hold(t.iqn for t in targets):
            warnings: list[str] = []
            lost = False
            # Also in single-path mode: multipathd may have built a map on our disk
            # by itself (find_multipaths no); the disk cannot go while it holds it.
            dm = self.multipath.map_device(device.wwn)
            progress("flushing")
            lost |= self._flush(dev_node(dm) if dm else device.path, force, warnings)
            if dm:
                progress("removing the multipath map")
                lost |= await self._remove_map(device.wwn, dm, force=force, warnings=warnings)
            if device.multipath:
                self.multipath.forget_wwid(device.wwn)
            progress("removing the disks")
            await self._delete_disks(list(device.paths))
            progress("logging out")
            await self._release_sessions(targets)
            return DetachResult(lost, tuple(warnings))

    def _flush(self, dev: str, force: bool, warnings: list[str]) -> bool:
        if not self.fs.exists(dev):
            return False
        try:
            self.fs.flush_buffers(dev)
        except OSError as err:
            if not force:
                raise DeviceBusy(f"flushing {dev} failed: {err}", device=dev) from err
            warnings.append(f"flushing {dev} failed ({err}); forced on: data may be lost")
            return True
        return False

    async def _remove_map(self, wwid: str, dm: str, *, force: bool,
                          warnings: list[str] | None = None) -> bool:
        for attempt in range(self.options.remove_attempts):
            try:
                await self.multipath.remove_map(wwid)
                break
            except DeviceBusy:
                if attempt + 1 < self.options.remove_attempts:
                    await asyncio.sleep(0.2 * (attempt + 1))  # udev/blkid hold it briefly
        else:
            if not force:
                raise DeviceBusy(f"multipath map {wwid} ({dm}) stays in use", wwid=wwid, dm=dm)
            await self.multipath.force_remove(wwid)
            if warnings is not None:
                warnings.append(f"map {wwid} was in use; removed by force: data may be lost")
            await self._wait_gone([f"{SYS_BLOCK}/{dm}"], f"map {wwid}")
            return True
        await self._wait_gone([f"{SYS_BLOCK}/{dm}"], f"map {wwid}")
        return False

    async def _delete_disks(self, paths: Sequence[PathInfo]) -> None:
        for p in paths:
            # Deleting a SCSI device is synchronous; the wait covers udev's removal.
            scsi.delete_device(self.fs, p.hctl)
        await self._wait_gone([f"{SYS_CLASS}/scsi_device/{p.hctl}" for p in paths], "the disks")

    async def _wait_gone(self, sys_paths: list[str], what: str) -> None:
        await self.udev.wait(lambda: not any(self.fs.exists(p) for p in sys_paths) or None,
                             timeout=self.options.device_timeout, what=f"{what} to go away")

    async def _release_sessions(self, targets: Sequence[IscsiTarget]) -> None:
        """Log out and forget only what no other LUN still uses (K2 shares one IQN)."""
        sessions = {(s.iqn, str(s.portal)): s for s in scsi.iscsi_sessions(self.fs)
                    if s.iface == self.options.iface}
        todo = []
        for t in _unique(IscsiTarget(t.portal, t.iqn, 0) for t in targets):
            s = sessions.get((t.iqn, str(t.portal)))
            if s is not None and scsi.devices_on_host(self.fs, s.host):
                continue
            todo.append((t, s is not None))
        await asyncio.gather(*(self._release(t, logged_in) for t, logged_in in todo))

    async def _release(self, target: IscsiTarget, logged_in: bool) -> None:
        if logged_in:
            await self.iscsiadm.logout(target.iqn, target.portal)
        if self.iscsiadm.has_node(target.iqn, target.portal):
            await self.iscsiadm.delete_node(target.iqn, target.portal)

    # ---- extend ----------------------------------------------------------------
    async def extend(self, spec: VolumeSpec, device: Device) -> int:
        vol = _expect_iscsi(spec)
        targets = device.iscsi_targets or _unique(vol.targets)
        async with self.locks.hold(t.iqn for t in targets):
            down = [p.hctl for p in device.paths
                    if scsi.device_state(self.fs, p.hctl) != "running"]
            if down or device.missing:
                raise PathsDown("every path must be up to resize safely", down=down,
                                missing=list(device.missing))
            for p in device.paths:
                scsi.rescan_device(self.fs, p.hctl)
            if not device.multipath:
                return scsi.size_bytes(self.fs, device.paths[0].device)
            await self.multipath.resize(device.wwn)
            dm = self.multipath.map_device(device.wwn)
            if dm is None:
                raise HostCommandError(f"map {device.wwn} vanished during resize")
            return scsi.size_bytes(self.fs, dm)

    # ---- connector properties ----------------------------------------------------
    def initiator_name(self) -> str | None:
        text = self.fs.try_read(INITIATOR_FILE) or ""
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "InitiatorName" and value.strip():
                return value.strip()
        return None

    def connector_properties(self, *, multipath: bool) -> dict[str, Any]:
        """What os-brick's get_connector_properties returns for iSCSI."""
        props: dict[str, Any] = {
            "platform": platform.machine(),
            "os_type": sys.platform,
            "ip": self.options.my_ip or _default_ip(),
            "host": socket.gethostname(),
            "multipath": multipath,
            "enforce_multipath": False,
            "do_local_attach": False,
        }
        initiator = self.initiator_name()
        if initiator:
            props["initiator"] = initiator
        return props


def _default_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _agreed_wwid(paths: list[_Path], expected: str | None) -> str:
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


def _describe(err: BaseException) -> str:
    if isinstance(err, HostAgentError):
        return f"{err.code}: {err.message}"
    return f"{type(err).__name__}: {err}"


def _no_path_error(vol: IscsiVolume, failures: dict[str, BaseException]) -> BaseException:
    errors = list(failures.values())
    for err in errors:
        if isinstance(err, AuthenticationFailed):
            return err
    if len({type(err) for err in errors}) == 1:
        return errors[0]  # every path failed alike: that error says it best
    return LoginFailed("no path to the volume: " + "; ".join(
        f"{p}: {_describe(e)}" for p, e in failures.items()),
        portals=sorted(failures), volume_id=vol.volume_id)
