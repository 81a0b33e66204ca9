"""The os-brick engine: os-brick's ISCSIConnector / FibreChannelConnector behind
hostagent's Connector protocol (`engine = os-brick`).

For users who trust os-brick's behaviour, and the baseline the benchmarks
measure the native engines against. os-brick runs in this process as root:
its privsep contexts are put in direct mode (no privsep daemon, no rootwrap),
its locks live under hostagent's lock_path. Its calls block (subprocesses,
time.sleep polling), so each runs in a worker thread and the event loop keeps
serving. os-brick does its own host access; hostagent's HostFS is only used to
describe the device os-brick made (its paths) and to tell whether it is still there.

A call cannot be cancelled once in os-brick: an operation timeout leaves the
thread running to its end (os-brick's own retries bound it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from hostagent.connection_info import FIBRE_CHANNEL, ISCSI
from hostagent.connectors.base import Connector, Progress, no_progress, refuse_single_path
from hostagent.connectors.devices import set_read_only_off_loop
from hostagent.errors import (
    CommandFailed,
    CommandTimeout,
    DeviceTimeout,
    HostAgentError,
    HostCommandError,
    InvalidRequest,
    LoginFailed,
    MultipathRequired,
    NoPath,
    WwidInUse,
    WwnMismatch,
)
from hostagent.host import scsi
from hostagent.host.fs import DISK_BY_ID, SYS_BLOCK, HostFS, dev_node
from hostagent.host.multipath import map_wwid
from hostagent.models import (
    Chap,
    ClaimsSource,
    DetachResult,
    Device,
    FcVolume,
    IscsiVolume,
    PathInfo,
    VolumeSpec,
    no_claims,
)

log = logging.getLogger("hostagent.brick")


class BrickBackend(Protocol):
    """The part of an os-brick InitiatorConnector this engine uses."""

    def connect_volume(self, connection_properties: dict[str, Any]) -> dict[str, Any]: ...

    def disconnect_volume(self, connection_properties: dict[str, Any],
                          device_info: dict[str, Any] | None, force: bool = False,
                          ignore_errors: bool = False) -> None: ...

    def extend_volume(self, connection_properties: dict[str, Any]) -> int | None: ...


# (protocol, multipath) -> an os-brick connector for it
BackendFactory = Callable[[str, bool], BrickBackend]


# BLKROSET opens the device, which waits on its I/O: os-brick has no device timeout
# of its own to bound it by, so the native engines' default.
READ_ONLY_DEADLINE = 30.0


@dataclass(frozen=True)
class BrickOptions:
    lock_path: str | None = None  # os-brick's external locks (connect_volume is host-wide)
    device_scan_attempts: int = 3  # os-brick's default


class CommandCounter:
    """Counts the host commands os-brick runs (its execute hook), for the benchmarks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0

    def wrap(self, execute: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*cmd: str, **kwargs: Any) -> Any:
            with self._lock:
                self.calls += 1
            return execute(*cmd, **kwargs)
        return counted


def configure_os_brick(lock_path: str | None) -> None:
    """os-brick in this process: privsep calls made directly, locks under lock_path.

    The agent already runs as root; a privsep daemon would only add a process and
    a socket hop to every command (and needs privsep-helper and sudo).
    """
    # Imported here, not with the module: os-brick is loaded only by agents that
    # chose it (build() calls this at start-up, so no request pays for it).
    import os_brick.opts  # noqa: F401  (registers the [os_brick] options)
    from os_brick import privileged
    from oslo_config import cfg

    for context in (privileged.default, privileged.brick_privsep_hide_output):
        context.set_client_mode(False)
    if lock_path:
        cfg.CONF.set_override("lock_path", lock_path, "os_brick")


def os_brick_factory(options: BrickOptions, counter: CommandCounter) -> BackendFactory:
    """The real os-brick connectors, configured once, one per (protocol, multipath)."""
    configure_os_brick(options.lock_path)
    from os_brick.initiator import connector
    from os_brick.privileged import rootwrap

    execute = counter.wrap(rootwrap.execute)
    names = {ISCSI: "ISCSI", FIBRE_CHANNEL: "FIBRE_CHANNEL"}

    def make(protocol: str, multipath: bool) -> BrickBackend:
        backend: BrickBackend = connector.InitiatorConnector.factory(
            names[protocol], None, use_multipath=multipath, execute=execute,
            device_scan_attempts=options.device_scan_attempts)
        return backend
    return make


# ---- spec -> os-brick connection properties ----------------------------------------

def _chap_props(chap: Chap | None, prefix: str) -> dict[str, Any]:
    if chap is None:
        return {}
    props: dict[str, Any] = {f"{prefix}_method": "CHAP", f"{prefix}_username": chap.username,
             f"{prefix}_password": chap.password}
    if chap.mutual:
        props[f"{prefix}_username_in"] = chap.username_in
        props[f"{prefix}_password_in"] = chap.password_in
    return props


def iscsi_properties(vol: IscsiVolume) -> dict[str, Any]:
    """os-brick's iSCSI connection_properties (the `data` of Cinder's connection_info)."""
    first = vol.targets[0]
    props: dict[str, Any] = {
        "target_portal": str(first.portal), "target_iqn": first.iqn, "target_lun": first.lun,
        "target_discovered": vol.discover, "volume_id": vol.volume_id,
        **_chap_props(vol.chap, "auth"), **_chap_props(vol.discovery_chap, "discovery_auth"),
    }
    if not vol.discover:  # singular keys alone make os-brick ask SendTargets
        props.update(target_portals=[str(t.portal) for t in vol.targets],
                     target_iqns=[t.iqn for t in vol.targets],
                     target_luns=[t.lun for t in vol.targets])
    return props


def fc_properties(vol: FcVolume) -> dict[str, Any]:
    props: dict[str, Any] = {"target_wwn": list(vol.target_wwpns), "target_lun": vol.lun,
                             "volume_id": vol.volume_id}
    if vol.initiator_target_map:
        props["initiator_target_map"] = {i: list(t) for i, t in vol.initiator_target_map}
    if vol.addressing_mode:
        props["addressing_mode"] = vol.addressing_mode
    return props


def properties(spec: VolumeSpec) -> dict[str, Any]:
    return iscsi_properties(spec) if isinstance(spec, IscsiVolume) else fc_properties(spec)


def protocol_of(spec: VolumeSpec) -> str:
    return ISCSI if isinstance(spec, IscsiVolume) else FIBRE_CHANNEL


# ---- os-brick's exceptions -> hostagent's error tree -----------------------------

def translate(err: Exception, action: str) -> HostAgentError:
    """The hostagent error for an os-brick failure (by class, never by message)."""
    from os_brick import exception as brick_exc
    from oslo_concurrency import processutils

    text = f"os-brick {action}: {err}"
    if isinstance(err, brick_exc.ExecutionTimeout):
        timeout = CommandTimeout([str(err.cmd or "command")], 1)
        timeout.message, timeout.args = text, (text,)  # os-brick does not say its timeout
        return timeout
    if isinstance(err, processutils.ProcessExecutionError):
        return CommandFailed([str(err.cmd or "command")], int(err.exit_code or 1),
                             str(err.stderr or err.description or ""))
    if isinstance(err, brick_exc.TargetPortalNotFound | brick_exc.FailedISCSITargetPortalLogin):
        return LoginFailed(text)
    if isinstance(err, brick_exc.NoFibreChannelHostsFound):
        return NoPath(text)
    if isinstance(err, brick_exc.VolumeDeviceNotFound | brick_exc.NoFibreChannelVolumeDeviceFound
                  | brick_exc.VolumePathsNotFound):
        return DeviceTimeout(text)
    if isinstance(err, brick_exc.InvalidConnectorProtocol | brick_exc.Invalid):
        return InvalidRequest("connection_info", text)
    return HostCommandError(text, error=type(err).__name__)


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except HostAgentError:
        raise
    except Exception as err:
        raise translate(err, action) from err


async def _disconnect(backend: BrickBackend, props: dict[str, Any],
                      info: dict[str, Any]) -> None:
    """Take away what os-brick just made for a refused attach. The first error is the
    one to report, whatever the clean-up meets."""
    with contextlib.suppress(Exception):
        await asyncio.to_thread(backend.disconnect_volume, props, info, True, True)


class BrickConnector:
    """One os-brick engine per protocol (iSCSI or FC); os-brick connectors per multipath mode."""

    def __init__(self, protocol: str, fs: HostFS, factory: BackendFactory, *,
                 properties: Callable[[bool], dict[str, Any]] | None = None) -> None:
        self.protocol = protocol
        self.fs = fs
        self._factory = factory
        self._backends: dict[bool, BrickBackend] = {}
        self._properties = properties

    def _backend(self, multipath: bool) -> BrickBackend:
        if multipath not in self._backends:
            self._backends[multipath] = self._factory(self.protocol, multipath)
        return self._backends[multipath]

    def _check(self, spec: VolumeSpec) -> dict[str, Any]:
        if protocol_of(spec) != self.protocol:
            raise InvalidRequest("connection_info.driver_volume_type",
                                 f"the os-brick {self.protocol} engine got a "
                                 f"{protocol_of(spec)} volume")
        return properties(spec)

    # ---- attach ----------------------------------------------------------------
    async def attach(self, spec: VolumeSpec, *, multipath: bool,
                     progress: Progress = no_progress,
                     claims: ClaimsSource = no_claims) -> Device:
        props = self._check(spec)
        if spec.access.enforce_multipath:
            refuse_single_path(multipath)
        backend = self._backend(multipath)
        progress("os-brick connect_volume")
        with _translated("connect_volume"):
            info = await asyncio.to_thread(backend.connect_volume, props)
        try:
            device = self._device(info, multipath, spec)
        except BaseException:
            await _disconnect(backend, props, info)  # a device we cannot describe
            raise
        if device.wwn in claims().wwids:
            # os-brick has already put the disks into the map of that WWID; a disconnect
            # would take the other attachment's map with them, and setting it read-only
            # would change that attachment's device, so they are left as they are.
            raise WwidInUse(f"os-brick attached WWID {device.wwn}, which another live "
                            "attachment's volume already has: refused", wwid=device.wwn)
        try:
            await self._apply_access(spec, device)
        except BaseException:
            await _disconnect(backend, props, info)
            raise
        return device

    async def _apply_access(self, spec: VolumeSpec, device: Device) -> None:
        """What the controller asked beyond the targets, on a device that is this
        attachment's alone (checked against the claims before)."""
        if spec.access.enforce_multipath and not device.multipath:
            # os-brick falls back to one path when multipathd is down.
            raise MultipathRequired("the controller enforces multipath (enforce_multipath) "
                                    f"and os-brick gave a single path ({device.path})",
                                    reason="no_map")
        if spec.access.read_only and device.path is not None:
            await set_read_only_off_loop(
                self.fs, [*(p.device for p in device.paths), os.path.basename(device.path)],
                deadline=READ_ONLY_DEADLINE)

    def _device(self, info: dict[str, Any], multipath: bool, spec: VolumeSpec) -> Device:
        # os-brick answers /dev/dm-N, /dev/sdX, or a /dev/disk/by-* link (single path).
        name = os.path.basename(os.path.realpath(self.fs.path(str(info["path"]))))
        wwn = str(info.get("scsi_wwn") or info.get("multipath_id") or "")
        is_map = name.startswith("dm-")
        disks = self.fs.listdir(f"{SYS_BLOCK}/{name}/slaves") if is_map else [name]
        if not disks:
            raise HostCommandError(f"os-brick gave {info['path']}, which has no disk",
                                   device=str(info["path"]))
        link = f"{DISK_BY_ID}/dm-uuid-mpath-{wwn}"
        stable = link if is_map and self.fs.realpath(link) == dev_node(name) else None
        return Device(dev_node(name), wwn, tuple(self._path_info(sd) for sd in disks), is_map,
                      size_bytes=scsi.size_bytes(self.fs, name),
                      iscsi_targets=spec.targets if isinstance(spec, IscsiVolume) else (),
                      stable_path=stable, read_only=spec.access.read_only,
                      encrypted=spec.access.encrypted)

    def _path_info(self, sd: str) -> PathInfo:
        hctl = scsi.hctl_of_disk(self.fs, sd) or ""
        host = hctl.split(":", 1)[0]
        for s in scsi.iscsi_sessions(self.fs) if host else ():
            if str(s.host) == host:
                return PathInfo(sd, hctl, str(s.portal), s.iqn)
        return PathInfo(sd, hctl)

    # ---- detach ----------------------------------------------------------------
    async def detach(self, spec: VolumeSpec, device: Device, *, force: bool = False,
                     progress: Progress = no_progress,
                     claims: ClaimsSource = no_claims) -> DetachResult:
        """os-brick decides for itself which sessions to log out (it counts the disks
        left on them); only a map another live attachment has is kept from it."""
        props = self._check(spec)
        if device.wwn in claims().wwids:
            return DetachResult(False, (f"{device.wwn} belongs to another live attachment: "
                                        "left to it",))
        backend = self._backend(device.multipath)
        progress("os-brick disconnect_volume")
        with _translated("disconnect_volume"):
            await asyncio.to_thread(backend.disconnect_volume, props, _device_info(device),
                                    force, force)
        # os-brick with force ignores flush errors and says nothing of them.
        warnings = ("forced through os-brick: data may be lost if the flush failed",)
        return DetachResult(force, warnings if force else ())

    async def restore(self, spec: VolumeSpec, device: Device, *,
                      progress: Progress = no_progress,
                      claims: ClaimsSource = no_claims) -> Device:
        """os-brick logs in from connection_info alone, and the store keeps none of its
        secrets: a CHAP volume cannot be restored by this engine."""
        if isinstance(spec, IscsiVolume) and (spec.chap or spec.discovery_chap):
            raise LoginFailed("the os-brick engine cannot log in again: the CHAP secrets "
                              "are not stored (attach the volume anew)")
        restored = await self.attach(spec, multipath=device.multipath, progress=progress,
                                     claims=claims)
        if restored.wwn != device.wwn:
            await self.detach(spec, restored, claims=claims)
            raise WwnMismatch(f"the volume now reports WWID {restored.wwn}, not the recorded "
                              f"{device.wwn}", wwid=restored.wwn, expected=device.wwn)
        return restored

    async def recover(self, spec: VolumeSpec, claims: ClaimsSource = no_claims) -> None:
        """os-brick finds the volume's devices from its properties alone."""
        props = self._check(spec)
        with _translated("disconnect_volume"):
            await asyncio.to_thread(self._backend(True).disconnect_volume, props, None,
                                    False, True)

    async def extend(self, spec: VolumeSpec, device: Device) -> int:
        props = self._check(spec)
        with _translated("extend_volume"):
            size = await asyncio.to_thread(self._backend(device.multipath).extend_volume, props)
        if size is None:
            raise HostCommandError("os-brick could not tell the new size")
        return int(size)

    def current(self, device: Device) -> Device | None:
        """The device if its recorded node is still the same volume (os-brick's
        disconnect finds the rest by it), else None: a name the kernel gave another
        device is never answered."""
        if device.path is None:  # found gone before: its old name proves nothing
            return None
        name = os.path.basename(device.path)
        if not self.fs.exists(f"{SYS_BLOCK}/{name}"):
            return None
        if device.multipath:
            return device if map_wwid(self.fs, name) == device.wwn else None
        same = all(scsi.wwid(self.fs, p.hctl) == device.wwn for p in device.paths)
        return device if same else None

    @property
    def session_iface(self) -> str | None:
        return None  # os-brick logs in on the default iface, or on any it is given

    def connector_properties(self, *, multipath: bool) -> dict[str, Any]:
        return self._properties(multipath) if self._properties else {}


def _device_info(device: Device) -> dict[str, Any]:
    """The device_info os-brick's connect_volume returned, rebuilt from the Device."""
    info: dict[str, Any] = {"type": "block", "path": device.path, "scsi_wwn": device.wwn}
    if device.multipath:
        info["multipath_id"] = device.wwn
    return info


def brick_connectors(fs: HostFS, options: BrickOptions,
                     native: Mapping[str, Connector]) -> dict[str, Connector]:
    """The os-brick engine for every protocol `native` serves. connector_properties
    stay the native engines' (they read the same files os-brick's would, without
    starting a process)."""
    factory = os_brick_factory(options, CommandCounter())
    return {protocol: BrickConnector(protocol, fs, factory,
                                     properties=_properties_of(connector))
            for protocol, connector in native.items()}


def _properties_of(connector: Connector) -> Callable[[bool], dict[str, Any]]:
    return lambda multipath: connector.connector_properties(multipath=multipath)
