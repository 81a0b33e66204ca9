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
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from hostagent.connectors.backoff import PortalBackoff
from hostagent.connectors.base import (
    PathRepair,
    Progress,
    RepairKind,
    no_progress,
)
from hostagent.connectors.devices import (
    Devices,
    ScsiPath,
    describe,
    first_path,
    note_left,
    path_failures,
    refuse_if_left,
)
from hostagent.connectors.discovery import DiscoveryMemory
from hostagent.connectors.locks import TargetLocks
from hostagent.connectors.properties import host_properties, iscsi_initiator
from hostagent.connectors.repair import restore_disk
from hostagent.errors import (
    AuthenticationFailed,
    CommandFailed,
    CommandTimeout,
    DaemonUnavailable,
    HostAgentError,
    InvalidRequest,
    LoginFailed,
    LunNotFound,
)
from hostagent.host import scsi
from hostagent.host.clock import SYSTEM_CLOCK, Clock
from hostagent.host.executor import Executor
from hostagent.host.fs import ETC_ISCSI, SYS_CLASS, HostFS
from hostagent.host.iscsiadm import Iscsiadm, IscsiErr, chap_settings
from hostagent.host.multipath import Multipath, MultipathdClient
from hostagent.host.udev import Udev
from hostagent.models import (
    Chap,
    ClaimsSource,
    DetachResult,
    Device,
    IscsiTarget,
    IscsiVolume,
    PathInfo,
    Portal,
    VolumeSpec,
    no_claims,
)

INITIATOR_FILE = f"{ETC_ISCSI}/initiatorname.iscsi"
LOGOUT_ATTEMPTS = 15  # s: a replacement_timeout and iscsid's reconnect, with room
_RECOVERING = (IscsiErr.SESS_NOT_FOUND, IscsiErr.SESSION_NOT_CONNECTED)
T = TypeVar("T")


@dataclass(frozen=True)
class IscsiOptions:
    iface: str = "hostagent"
    login_timeout: int = 5  # s per login attempt: a dead portal costs at most 2 of them
    login_attempts: int = 2
    device_timeout: float = 30.0  # for an sd or a map to appear once the kernel has the LUN
    command_timeout: float = 30.0  # iscsiadm (but logins) and multipathd commands
    remove_attempts: int = 3  # a map briefly held open (udev, blkid) is retried this often
    portal_retry_interval: float = 30.0  # s a portal that did not answer rests; 0: never
    rediscover_after: float = 120.0  # s a SendTargets answer serves live sessions; 0: never
    my_ip: str | None = None


def _expect_iscsi(spec: VolumeSpec) -> IscsiVolume:
    if not isinstance(spec, IscsiVolume):
        raise InvalidRequest("connection_info.driver_volume_type",
                             "the iSCSI engine got a non-iSCSI volume")
    return spec


def _discovers(vol: IscsiVolume, multipath: bool) -> bool:
    """A multipath attach given one portal asks it for the others (SendTargets)."""
    return vol.discover and multipath


def _unique(targets: Iterable[IscsiTarget]) -> tuple[IscsiTarget, ...]:
    return tuple(dict.fromkeys(targets))


class IscsiConnector:
    def __init__(self, executor: Executor, fs: HostFS, udev: Udev,
                 multipathd: MultipathdClient, *, locks: TargetLocks | None = None,
                 options: IscsiOptions | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.fs = fs
        self.udev = udev
        self.options = options or IscsiOptions()
        self.iscsiadm = Iscsiadm(executor, fs, iface=self.options.iface,
                                 timeout=self.options.command_timeout, clock=clock)
        self.multipath = Multipath(multipathd, fs, executor=executor,
                                   timeout=self.options.command_timeout)
        self.devices = Devices(fs, udev, self.multipath,
                               device_timeout=self.options.device_timeout,
                               remove_attempts=self.options.remove_attempts, clock=clock)
        self.locks = locks or TargetLocks()
        self.backoff = PortalBackoff(clock, self.options.portal_retry_interval)
        self.discoveries = DiscoveryMemory(clock, self.options.rediscover_after)
        self.clock = clock

    # ---- attach ----------------------------------------------------------------
    async def attach(self, spec: VolumeSpec, *, multipath: bool,
                     progress: Progress = no_progress,
                     claims: ClaimsSource = no_claims) -> Device:
        vol = _expect_iscsi(spec)
        await self.devices.require_multipath(vol.access, multipath)
        await self.iscsiadm.ensure_iface()
        targets = await self._resolve(vol, multipath, progress)
        device = await self._make(vol, targets, multipath, progress, claims, restoring=False)
        if not _discovers(vol, multipath):
            return device
        return replace(device, discovered_from=str(vol.targets[0].portal))

    async def restore(self, spec: VolumeSpec, device: Device, *,
                      progress: Progress = no_progress,
                      claims: ClaimsSource = no_claims) -> Device:
        """The device of an attachment recorded attached, made again (after a reboot)
        from hostagent's own node records, which hold the CHAP settings the store
        does not: no record is made, changed or removed, and every path must report
        the recorded WWID."""
        vol = replace(_expect_iscsi(spec), expected_wwn=device.wwn)
        await self.iscsiadm.ensure_iface()
        targets = device.iscsi_targets or _unique(vol.targets)
        made = await self._make(vol, targets, device.multipath, progress, claims,
                                restoring=True)
        return replace(made, discovered_from=device.discovered_from)

    async def _make(self, vol: IscsiVolume, targets: tuple[IscsiTarget, ...], multipath: bool,
                    progress: Progress, claims: ClaimsSource, *, restoring: bool) -> Device:
        async with self.locks.hold(t.iqn for t in targets):
            # Read once under the lock, not per target: a listing reads every session.
            live = {(s.iqn, str(s.portal)): s for iqn in dict.fromkeys(t.iqn for t in targets)
                    for s in self._sessions(iqn)}
            connect = functools.partial(self._connect, vol=vol, progress=progress,
                                        restoring=restoring, live=live)
            progress("logging in")
            try:
                if multipath:
                    outcomes = await asyncio.gather(*(connect(t) for t in targets),
                                                    return_exceptions=True)
                else:
                    outcomes = await first_path(functools.partial(connect, t) for t in targets)
                failures = path_failures([str(t.portal) for t in targets], outcomes)
            except BaseException as err:
                # Cut off mid-login (a timeout, a shutdown), or a bug: a path may be half
                # made, so what exists is found anew rather than taken from outcomes.
                note_left(err, await self._undo(vol, targets, claims, keep_records=restoring))
                raise
            paths = [o for o in outcomes if isinstance(o, ScsiPath)]
            try:
                return await self._finish(vol, targets, paths, failures, multipath, progress,
                                          claims)
            except BaseException as err:
                note_left(err, await self._rollback(targets, paths, claims,
                                                    keep_records=restoring))
                raise

    async def _resolve(self, vol: IscsiVolume, multipath: bool,
                       progress: Progress) -> tuple[IscsiTarget, ...]:
        if not _discovers(vol, multipath):
            return _unique(vol.targets)
        first = vol.targets[0]
        portals = self._recalled(first, vol.discovery_chap)
        if portals is None:
            progress("discovering")
            found = await self._at_portal(str(first.portal), lambda: self.iscsiadm.discover(
                first.portal, vol.discovery_chap))
            portals = tuple(dict.fromkeys(d.portal for d in found if d.iqn == first.iqn))
            if not portals:
                raise LoginFailed(f"SendTargets on {first.portal} does not list {first.iqn}",
                                  portal=str(first.portal), iqn=first.iqn,
                                  listed=sorted({d.iqn for d in found}))
            self.discoveries.remember(first.portal, first.iqn, vol.discovery_chap, portals)
        return tuple(IscsiTarget(p, first.iqn, first.lun) for p in portals)

    def _recalled(self, first: IscsiTarget, chap: Chap | None) -> tuple[Portal, ...] | None:
        """A recent answer of `first`'s portal, if every portal it listed has a logged-in
        session of ours to the target: otherwise the array is asked again (a path lost,
        logged out, or a portal moved)."""
        portals = self.discoveries.recall(first.portal, first.iqn, chap)
        if portals is None:
            return None
        live = {str(s.portal) for s in self._sessions(first.iqn) if s.state == scsi.LOGGED_IN}
        if all(str(p) in live for p in portals):
            return portals
        self.discoveries.forget(first.portal, first.iqn, chap)
        return None

    async def _connect(self, target: IscsiTarget, *, vol: IscsiVolume, progress: Progress,
                       restoring: bool,
                       live: Mapping[tuple[str, str], scsi.IscsiSession]) -> ScsiPath:
        iqn, portal = target.iqn, target.portal
        session = live.get((iqn, str(portal)))
        if session is None:
            self.backoff.check(str(portal), iqn=iqn)
            if restoring:
                self._require_record(target)
            elif self.iscsiadm.has_node(iqn, portal):
                # Our record from an earlier attach: credentials may have changed.
                await self.iscsiadm.update_node(iqn, portal, self._node_settings(vol.chap))
            else:
                await self.iscsiadm.create_node(iqn, portal, self._node_settings(vol.chap))
            session = await self._login(target, vol)
        hctl = f"{session.host}:0:{session.target_id}:{target.lun}"
        progress(f"scanning {hctl} ({portal})")
        sd, created = await self.devices.scan(hctl, lambda: LunNotFound(
            f"{iqn} at {portal} has no LUN {target.lun} for this initiator", iqn=iqn,
            portal=str(portal), lun=target.lun))
        progress(f"disk {sd} ready ({portal})")
        return ScsiPath(PathInfo(sd, hctl, str(portal), iqn),
                        self.devices.path_wwid(hctl, sd), created)

    def _require_record(self, target: IscsiTarget) -> None:
        if not self.iscsiadm.has_node(target.iqn, target.portal):
            # The secrets are not stored, so the record cannot be made anew.
            raise LoginFailed(f"no node record of ours for {target.iqn} at {target.portal}",
                              iqn=target.iqn, portal=str(target.portal))

    async def _login(self, target: IscsiTarget, vol: IscsiVolume) -> scsi.IscsiSession:
        """Log in with the node record; the session the kernel then shows."""
        iqn, portal = target.iqn, str(target.portal)
        await self._at_portal(portal, lambda: self.iscsiadm.login(
            iqn, target.portal, mutual_chap=bool(vol.chap and vol.chap.mutual),
            timeout=self.options.login_timeout * self.options.login_attempts + 15), iqn=iqn)
        session = self.session(iqn, portal)
        if session is None:
            raise LoginFailed(f"logged in to {iqn} at {portal} but the kernel shows no "
                              "session", iqn=iqn, portal=portal)
        return session

    async def _at_portal(self, portal: str, call: Callable[[], Awaitable[T]], *,
                         iqn: str | None = None) -> T:
        """A login to `iqn`, or with none a discovery, at `portal`; its outcome decides
        whether that target there, or the whole portal, rests (backoff.py says which)."""
        self.backoff.check(portal, iqn=iqn)
        try:
            result = await call()
        except HostAgentError as err:
            self.backoff.record(portal, err, iqn=iqn)
            raise
        self.backoff.record(portal, None, iqn=iqn)
        return result

    def _node_settings(self, chap: Chap | None) -> dict[str, str]:
        opts = self.options
        return {
            "node.startup": "manual",
            "node.session.scan": "manual",  # we scan exactly our LUN, never the whole target
            "node.conn[0].timeo.login_timeout": str(opts.login_timeout),
            "node.session.initial_login_retry_max": str(opts.login_attempts),
            **chap_settings(chap, "node.session.auth"),
        }

    def session(self, iqn: str, portal: str) -> scsi.IscsiSession | None:
        """hostagent's own session to `iqn` at `portal`, if the kernel has it."""
        return next((s for s in self._sessions(iqn) if str(s.portal) == portal), None)

    def _sessions(self, iqn: str) -> list[scsi.IscsiSession]:
        """hostagent's own sessions to `iqn`."""
        return [s for s in scsi.iscsi_sessions(self.fs, iqn) if s.iface == self.options.iface]

    async def _finish(self, vol: IscsiVolume, targets: tuple[IscsiTarget, ...],
                      paths: list[ScsiPath], failures: dict[str, HostAgentError],
                      multipath: bool, progress: Progress, claims: ClaimsSource) -> Device:
        if not paths:
            raise _no_path_error(vol, failures)
        missing = tuple(f"{portal}: {describe(err)}" for portal, err in failures.items())
        return await self.devices.finish(paths, missing, multipath=multipath,
                                         expected_wwn=vol.expected_wwn, progress=progress,
                                         iscsi_targets=targets, claims=claims(),
                                         access=vol.access)

    async def _rollback(self, targets: Sequence[IscsiTarget], paths: list[ScsiPath],
                        claims: ClaimsSource, *, keep_records: bool = False) -> list[str]:
        """What a failed attach made goes; what had to stay is returned (an open map
        with its disks: plan_release then keeps the sessions they sit on)."""
        left = await self.devices.rollback(paths, claims=claims())
        await self._release_sessions(targets, claims, keep_records=keep_records)
        return left

    # ---- recovery after a crash ---------------------------------------------------
    async def recover(self, spec: VolumeSpec, claims: ClaimsSource = no_claims) -> None:
        """Undo an attach the agent did not live to finish, knowing only its spec.

        Whatever of this volume's LUN sits on hostagent's own sessions is taken
        away (its map, its disks), then every session and node record of the
        volume's targets that no other LUN uses. Others' sessions are not looked at.
        """
        vol = _expect_iscsi(spec)
        async with self.locks.hold(vol.iqns):
            refuse_if_left(await self._undo(vol, vol.targets, claims))

    async def _undo(self, vol: IscsiVolume, targets: Sequence[IscsiTarget],
                    claims: ClaimsSource, *, keep_records: bool = False) -> list[str]:
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
                paths.append(ScsiPath(info, scsi.wwid(self.fs, hctl) or "", True))
        left = await self._rollback(_unique([
            *targets,
            *(IscsiTarget(s.portal, s.iqn, lun_of[s.iqn]) for s in sessions),
            *(IscsiTarget(p, iqn, lun) for iqn, lun in lun_of.items()
              for p in self.iscsiadm.node_portals(iqn))]), paths, claims,
            keep_records=keep_records)
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
        vol = _expect_iscsi(spec)
        targets = device.iscsi_targets or _unique(vol.targets)
        async with self.locks.hold(t.iqn for t in targets):
            result = await self.devices.release(device, device.paths, force=force,
                                                progress=progress, claims=claims())
            progress("logging out")
            await self._release_sessions(targets, claims)
            return result

    async def _release_sessions(self, targets: Sequence[IscsiTarget], claims: ClaimsSource,
                                *, keep_records: bool = False) -> None:
        """Log out and forget only what no other LUN and no other live attachment
        still uses (K2 shares one IQN), as plan_release decides. `keep_records`: a
        restore that failed keeps the records, the only copy of the CHAP settings."""
        portals: dict[str, list[Portal]] = {}
        for t in targets:
            portals.setdefault(t.iqn, []).append(t.portal)
        await asyncio.gather(*(self._release(iqn, list(dict.fromkeys(wanted)), claims,
                                             keep_records)
                               for iqn, wanted in portals.items()))

    async def _release(self, iqn: str, portals: list[Portal], claims: ClaimsSource,
                       keep_records: bool) -> None:
        # Read right before the logout: what holds a disk now, not at attach.
        sessions = self._sessions(iqn)
        plan = plan_release(portals, {s.portal: bool(scsi.devices_on_host(self.fs, s.host))
                                      for s in sessions},
                            frozenset(p for i, p in claims().sessions if i == iqn))
        if plan.whole:
            if sessions:
                await self._logout(iqn)
            if not keep_records:
                await self.iscsiadm.delete_nodes(iqn)
            return
        logged_in = {s.portal for s in sessions}
        await asyncio.gather(*(self._logout(iqn, p) for p in plan.portals
                               if p in logged_in))
        if not keep_records:
            await self.iscsiadm.delete_nodes(iqn, plan.portals)

    async def _logout(self, iqn: str, portal: Portal | None = None) -> None:
        """Our sessions of `iqn` (at `portal`) logged out. A session in recovery (iscsid
        just restarted, a portal just back) refuses until iscsid has it again, and
        iscsiadm then reports a session it did end as not found; iscsid itself may be
        restarting (DaemonUnavailable) or too slow for our timeout. After any failure
        what is left is read again: none of ours left is done, else a transient failure
        is tried again, a second apart, within LOGOUT_ATTEMPTS tries and seconds."""
        start = self.clock.monotonic()
        for attempt in range(1, LOGOUT_ATTEMPTS + 1):
            try:
                await self.iscsiadm.logout(iqn, portal)
                return
            except (CommandFailed, DaemonUnavailable, CommandTimeout) as err:
                if not [s for s in self._sessions(iqn) if portal in (None, s.portal)]:
                    return  # what it refused, or did without telling us, is gone
                # iscsid restarting or slow ends sessions on its own time, not ours.
                transient = not isinstance(err, CommandFailed) or err.returncode in _RECOVERING
                # Timed-out tries count in seconds too: a hung iscsid must not hold a
                # detach for LOGOUT_ATTEMPTS command timeouts.
                spent = self.clock.monotonic() - start
                if not transient or attempt == LOGOUT_ATTEMPTS or spent >= LOGOUT_ATTEMPTS:
                    raise
            await self.clock.sleep(1.0)

    # ---- extend ----------------------------------------------------------------
    async def extend(self, spec: VolumeSpec, device: Device) -> int:
        vol = _expect_iscsi(spec)
        targets = device.iscsi_targets or _unique(vol.targets)
        async with self.locks.hold(t.iqn for t in targets):
            return await self.devices.resize(device, device.paths, device.missing)

    # ---- self-healing ------------------------------------------------------------
    async def repair(self, spec: VolumeSpec, device: Device, repair: PathRepair) -> PathInfo:
        vol = _expect_iscsi(spec)
        targets = device.iscsi_targets or _unique(vol.targets)
        async with self.locks.hold(t.iqn for t in targets):
            hctl = repair.hctl
            if repair.kind == RepairKind.LOGIN:
                hctl = await self._relogin(vol, targets, repair)
            info = await restore_disk(self.devices, self.fs, device, repair, hctl)
            return replace(info, portal=repair.label)

    async def _relogin(self, vol: IscsiVolume, targets: Sequence[IscsiTarget],
                       repair: PathRepair) -> str:
        """The session to a portal logged in again from our own node record."""
        target = next((t for t in targets
                       if str(t.portal) == repair.label and t.iqn == repair.target), None)
        if target is None:
            raise LoginFailed(f"{repair.label} is not a portal of the volume",
                              portal=repair.label)
        self._require_record(target)
        # Never a logout first: a session that exists (however slow) is iscsid's to recover.
        s = await self._login(target, vol)
        return f"{s.host}:0:{s.target_id}:{target.lun}"

    # ---- connector properties ----------------------------------------------------
    @property
    def session_iface(self) -> str | None:
        return self.options.iface

    def connector_properties(self, *, multipath: bool) -> dict[str, Any]:
        """What os-brick's get_connector_properties returns, with its iSCSI `initiator`:
        read as os-brick reads it (`cat`, first line starting `InitiatorName=`), the
        file as it is (HostFS.read would strip its first line's indentation)."""
        props = host_properties(self.fs, multipath=multipath, my_ip=self.options.my_ip)
        try:
            text: str | None = self.fs.path(INITIATOR_FILE).read_text()
        except (OSError, UnicodeDecodeError):
            text = None
        if initiator := iscsi_initiator(text):
            props["initiator"] = initiator
        return props


@dataclass(frozen=True)
class ReleasePlan:
    whole: bool  # one logout of all our sessions to the target, and all its records
    portals: tuple[Portal, ...] = ()  # else: only these portals' sessions and records


def plan_release(wanted: Sequence[Portal], sessions: Mapping[Portal, bool],
                 kept: frozenset[str]) -> ReleasePlan:
    """What of a target a teardown may end. `sessions`: our sessions' portals and
    whether a disk is on each; `kept`: portals another live attachment expects,
    with or without a session now (a path that is down is still expected). A portal
    that is busy or kept keeps its session and record; the target goes whole only
    when none is."""
    busy = {str(p) for p, has_disks in sessions.items() if has_disks} | kept
    if not busy:
        return ReleasePlan(True)
    return ReleasePlan(False, tuple(p for p in wanted if str(p) not in busy))


def _no_path_error(vol: IscsiVolume, failures: Mapping[str, HostAgentError]) -> BaseException:
    errors = list(failures.values())
    for err in errors:
        if isinstance(err, AuthenticationFailed):
            return err
    if len({type(err) for err in errors}) == 1:
        return errors[0]  # every path failed alike: that error says it best
    return LoginFailed("no path to the volume: " + "; ".join(
        f"{p}: {describe(e)}" for p, e in failures.items()),
        portals=sorted(failures), volume_id=vol.volume_id)
