"""The native Fibre Channel engine: connection_info in, one healthy multipath device out.

Attach: every online HBA that initiator_target_map allows, every remote port of
the volume's targets that HBA sees online, a targeted `C T L` scan of the one
LUN on that SCSI host (never '- - -'), the sd awaited by udev event (FCoE hosts
have no /dev/disk/by-path link), WWNs checked, the map built through
multipathd's socket. Pairs of HBA and target that cannot carry a path (a port
down, a target not seen) are named in Device.missing. Detach is the mirror,
including paths that came back after the attach. No host process at all: sysfs,
udev and multipathd's socket.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from hostagent.connectors.base import PathRepair, Progress, no_progress
from hostagent.connectors.devices import (
    Devices,
    ScsiPath,
    describe,
    first_path,
    note_left,
    path_failures,
    refuse_if_left,
)
from hostagent.connectors.locks import TargetLocks
from hostagent.connectors.properties import host_properties, sysfs_order
from hostagent.connectors.repair import restore_disk
from hostagent.errors import (
    HostAgentError,
    HostCommandError,
    InvalidRequest,
    LunNotFound,
    NoPath,
)
from hostagent.host import fc, scsi
from hostagent.host.clock import SYSTEM_CLOCK, Clock
from hostagent.host.executor import Executor
from hostagent.host.fs import SYS_CLASS, HostFS
from hostagent.host.multipath import Multipath, MultipathdClient
from hostagent.host.udev import Udev
from hostagent.models import (
    ClaimsSource,
    DetachResult,
    Device,
    FcVolume,
    PathInfo,
    VolumeSpec,
    no_claims,
)


@dataclass(frozen=True)
class FcOptions:
    device_timeout: float = 30.0  # for an sd or a map to appear once the kernel has the LUN
    command_timeout: float = 30.0  # multipathd commands
    remove_attempts: int = 3  # a map briefly held open (udev, blkid) is retried this often
    my_ip: str | None = None


@dataclass(frozen=True)
class _Pair:
    """An HBA and a remote target port it sees: one possible path."""

    hba: fc.FcHba
    rport: fc.RemotePort

    @property
    def label(self) -> str:
        return f"{self.hba.port_name} -> {self.rport.port_name}"


@dataclass(frozen=True)
class _Plan:
    pairs: tuple[_Pair, ...]  # to scan
    missing: tuple[str, ...]  # expected paths that cannot be made, with the reason


def _expect_fc(spec: VolumeSpec) -> FcVolume:
    if not isinstance(spec, FcVolume):
        raise InvalidRequest("connection_info.driver_volume_type",
                             "the Fibre Channel engine got a non-FC volume")
    return spec


def plan(hbas: Sequence[fc.FcHba], rports: Sequence[fc.RemotePort], vol: FcVolume) -> _Plan:
    """Which HBA/target pairs to scan, and which expected ones cannot carry a path.

    With initiator_target_map, only its HBAs are used, each towards its own
    targets; without it, every HBA towards every target. Controllers (the K2
    driver among them) map every initiator to every target whatever the zoning,
    so a target one HBA does not see is normal; only a target that no usable HBA
    sees is missing. A remote port without a SCSI target id cannot carry a path:
    the kernel's FC scan (fc_user_scan) skips such ports, wildcard or not.
    """
    itmap = dict(vol.initiator_target_map)
    pairs: list[_Pair] = []
    missing: list[str] = []
    seen: set[str] = set()  # targets some online allowed HBA sees as FCP targets
    wanted: dict[str, None] = {}  # every target an online allowed HBA should reach
    for wwpn in itmap:
        if wwpn not in {h.port_name for h in hbas}:
            missing.append(f"{wwpn}: no such HBA on this host")
    for hba in hbas:
        if itmap and hba.port_name not in itmap:
            continue
        if not hba.online:
            missing.append(f"{hba.port_name} (host{hba.host}): port {hba.port_state}")
            continue
        ports = {p.port_name: p for p in rports if p.host == hba.host and p.is_target}
        for target in itmap.get(hba.port_name, vol.target_wwpns):
            wanted[target] = None
            rport = ports.get(target)
            if rport is None:
                continue
            seen.add(target)
            label = f"{hba.port_name} -> {target}"
            if not rport.online:
                missing.append(f"{label}: remote port {rport.name} {rport.port_state}")
            elif rport.target_id is None:
                missing.append(f"{label}: remote port {rport.name} has no SCSI target id")
            else:
                pairs.append(_Pair(hba, rport))
    missing += [f"{t}: seen by no online HBA" for t in wanted if t not in seen]
    return _Plan(tuple(pairs), tuple(missing))


class FcConnector:
    # The executor is unused today (sysfs, udev and multipathd's socket do it all);
    # it is taken like every engine's so a forced map removal can run dmsetup.
    def __init__(self, executor: Executor, fs: HostFS, udev: Udev,
                 multipathd: MultipathdClient, *, locks: TargetLocks | None = None,
                 options: FcOptions | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.fs = fs
        self.options = options or FcOptions()
        self.multipath = Multipath(multipathd, fs, executor=executor,
                                   timeout=self.options.command_timeout)
        self.devices = Devices(fs, udev, self.multipath,
                               device_timeout=self.options.device_timeout,
                               remove_attempts=self.options.remove_attempts, clock=clock)
        self.locks = locks or TargetLocks()

    def _plan(self, vol: FcVolume) -> _Plan:
        return plan(fc.hbas(self.fs), fc.remote_ports(self.fs), vol)

    # ---- attach ----------------------------------------------------------------
    async def attach(self, spec: VolumeSpec, *, multipath: bool,
                     progress: Progress = no_progress,
                     claims: ClaimsSource = no_claims) -> Device:
        vol = _expect_fc(spec)
        await self.devices.require_multipath(vol.access, multipath)
        async with self.locks.hold(vol.target_keys):
            progress("finding the target ports")
            todo = self._plan(vol)
            if not todo.pairs:
                raise NoPath("no online HBA of this host sees a target port of the volume",
                             missing=list(todo.missing), targets=list(vol.target_wwpns))
            progress("scanning")
            try:
                if multipath:
                    outcomes = await asyncio.gather(
                        *(self._connect(p, vol, progress) for p in todo.pairs),
                        return_exceptions=True)
                else:
                    outcomes = await first_path(
                        functools.partial(self._connect, p, vol, progress) for p in todo.pairs)
                failures = path_failures([p.label for p in todo.pairs], outcomes)
            except BaseException as err:
                # Cut off mid-scan (a timeout, a shutdown), or a bug: a path may be
                # half made, so what exists is found anew rather than taken from outcomes.
                note_left(err, await self._undo(vol, claims=claims))
                raise
            paths = [o for o in outcomes if isinstance(o, ScsiPath)]
            try:
                missing = todo.missing + tuple(f"{k}: {describe(e)}" for k, e in failures.items())
                if not paths:
                    raise _no_path_error(failures, missing)
                return await self.devices.finish(paths, missing, multipath=multipath,
                                                 expected_wwn=vol.expected_wwn,
                                                 progress=progress, claims=claims(),
                                                 access=vol.access)
            except BaseException as err:
                note_left(err, await self.devices.rollback(paths, claims=claims()))
                raise

    async def restore(self, spec: VolumeSpec, device: Device, *,
                      progress: Progress = no_progress,
                      claims: ClaimsSource = no_claims) -> Device:
        """The device made again (after a reboot) by a targeted scan of the recorded
        targets; every path must report the recorded WWID."""
        vol = replace(_expect_fc(spec), expected_wwn=device.wwn)
        return await self.attach(vol, multipath=device.multipath, progress=progress,
                                 claims=claims)

    async def _connect(self, pair: _Pair, vol: FcVolume, progress: Progress) -> ScsiPath:
        lun = fc.kernel_lun(vol.lun, vol.addressing_mode)
        rport = pair.rport

        def not_found() -> HostAgentError:
            return LunNotFound(f"target {rport.port_name} seen by {pair.hba.port_name} has "
                               f"no LUN {vol.lun} for this initiator", hba=pair.hba.port_name,
                               target=rport.port_name, lun=vol.lun)

        hctl = f"{rport.host}:{rport.channel}:{rport.target_id}:{lun}"
        progress(f"scanning {hctl} ({pair.label})")
        try:
            sd, created = await self.devices.scan(hctl, not_found)
        except OSError as err:  # the scan or delete file refused the write
            raise HostCommandError(f"scanning LUN {lun} on host{rport.host} failed: {err}",
                                   hba=pair.hba.port_name, target=rport.port_name) from err
        progress(f"disk {sd} ready ({pair.label})")
        return ScsiPath(PathInfo(sd, hctl, None, rport.port_name),
                        self.devices.path_wwid(hctl, sd), created)

    # ---- what of a volume is on the host -------------------------------------------
    def _found(self, vol: FcVolume) -> list[ScsiPath]:
        """The SCSI devices at the volume's LUN behind any remote port of its targets,
        on any HBA (online or not): what an attach may have made."""
        lun = fc.kernel_lun(vol.lun, vol.addressing_mode)
        targets = vol.target_keys
        found = []
        for rport in fc.remote_ports(self.fs):
            if rport.port_name not in targets or rport.target_id is None:
                continue
            hctl = f"{rport.host}:{rport.channel}:{rport.target_id}:{lun}"
            if self.fs.exists(f"{SYS_CLASS}/scsi_device/{hctl}"):
                info = PathInfo(scsi.disk_of(self.fs, hctl) or "", hctl, None, rport.port_name)
                found.append(ScsiPath(info, scsi.wwid(self.fs, hctl) or "", True))
        return found

    def _paths_of(self, vol: FcVolume, device: Device) -> list[PathInfo]:
        """Every disk of the attached volume now: the attach's paths, the map's
        slaves, and any disk with its WWID at its LUN (a path whose link came back
        after the attach was scanned by the kernel itself and joined the map)."""
        paths = {p.hctl: p for p in device.paths}
        for sd in self.devices.map_slaves(device):
            hctl = scsi.hctl_of_disk(self.fs, sd)
            if hctl:
                paths.setdefault(hctl, PathInfo(sd, hctl))
        for p in self._found(vol):
            if p.wwid == device.wwn:
                paths.setdefault(p.info.hctl, p.info)
        return list(paths.values())

    # ---- recovery after a crash ---------------------------------------------------
    async def recover(self, spec: VolumeSpec, claims: ClaimsSource = no_claims) -> None:
        """Undo an attach the agent did not live to finish, knowing only its spec.

        The volume's LUN behind every remote port of its targets goes (its map, its
        disks). An open map is left alone (DeviceBusy) rather than forced away, as
        by every rollback.
        """
        vol = _expect_fc(spec)
        async with self.locks.hold(vol.target_keys):
            refuse_if_left(await self._undo(vol, claims=claims))

    async def _undo(self, vol: FcVolume, *, claims: ClaimsSource) -> list[str]:
        paths = self._found(vol)
        if vol.expected_wwn:  # a disk at the LUN that is another volume is not ours
            want = vol.expected_wwn.lower().removeprefix("naa.")
            paths = [p for p in paths if p.wwid in ("", want, "3" + want)]
        left = await self.devices.rollback(paths, claims=claims())
        self.devices.forget_unmapped(paths)
        return left

    def current(self, device: Device) -> Device | None:
        """The attached volume's device as the host has it now (names read again), or
        None when it is gone."""
        return self.devices.current(device)

    # ---- detach ----------------------------------------------------------------
    async def detach(self, spec: VolumeSpec, device: Device, *, force: bool = False,
                     progress: Progress = no_progress,
                     claims: ClaimsSource = no_claims) -> DetachResult:
        vol = _expect_fc(spec)
        async with self.locks.hold(vol.target_keys):
            return await self.devices.release(device, self._paths_of(vol, device),
                                              force=force, progress=progress, claims=claims())

    # ---- self-healing ------------------------------------------------------------
    async def repair(self, spec: VolumeSpec, device: Device, repair: PathRepair) -> PathInfo:
        vol = _expect_fc(spec)
        async with self.locks.hold(vol.target_keys):
            return await restore_disk(self.devices, self.fs, device, repair, repair.hctl)

    # ---- extend ----------------------------------------------------------------
    async def extend(self, spec: VolumeSpec, device: Device) -> int:
        """Every path the volume should have must be up now (not as at attach)."""
        vol = _expect_fc(spec)
        async with self.locks.hold(vol.target_keys):
            now = self._plan(vol)
            paths = self._paths_of(vol, device)
            have = {p.hctl.rsplit(":", 1)[0] for p in paths}
            lun = fc.kernel_lun(vol.lun, vol.addressing_mode)
            without = [f"{p.label}: no disk of the volume at LUN {lun}" for p in now.pairs
                       if f"{p.rport.host}:{p.rport.channel}:{p.rport.target_id}" not in have]
            return await self.devices.resize(device, paths, [*now.missing, *without])

    # ---- connector properties ----------------------------------------------------
    @property
    def session_iface(self) -> str | None:
        return None

    def connector_properties(self, *, multipath: bool) -> dict[str, Any]:
        """What os-brick's get_connector_properties returns, with its FC `wwpns` and
        `wwnns`: the ports whose port_state is Online, in the order the kernel lists
        /sys/class/fc_host (os-brick globs it), each list left out when empty."""
        props = host_properties(self.fs, multipath=multipath, my_ip=self.options.my_ip)
        online = sorted((h for h in fc.hbas(self.fs) if h.online),
                        key=lambda h: sysfs_order(f"host{h.host}"))
        if online:
            props["wwpns"] = [h.port_name for h in online]
            props["wwnns"] = [h.node_name for h in online]
        return props


def _no_path_error(failures: dict[str, HostAgentError],
                   missing: tuple[str, ...]) -> HostAgentError:
    errors = [e for e in failures.values() if isinstance(e, HostAgentError)]
    if errors and len(errors) == len(missing) and len({type(e) for e in errors}) == 1:
        return errors[0]  # every path failed alike, and nothing else was missing
    return NoPath("no path to the volume: " + "; ".join(missing), missing=list(missing))
