"""Health of attached volumes, and the repairs that are safe to make.

Three parts kept apart so the rules can be tested without a host:
- gathering (I/O): what sysfs, multipathd and an optional O_DIRECT read show
  for each attached volume (`Observer`, `Prober`) -> AttachmentObservation;
- evaluation (pure): observation -> healthy / degraded / failed with reasons
  (`evaluate`), and which repairs apply (`plan_heal`);
- `HealthMonitor`: the periodic loop and the on-demand check, transitions
  history, metrics, and self-healing (`Healer`).

Self-healing never logs a session out (a slow session is left to iscsid: the
logout/login cycles of other agents turned file systems read-only), only acts
on attachments in hostagent's state store, and takes the attachment's lock and
its targets' locks as attach and detach do; an attachment with an operation
under way is skipped for that round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from hostagent.connection_info import ISCSI, parse
from hostagent.connectors.devices import describe
from hostagent.connectors.fc import FcConnector
from hostagent.connectors.fc import plan as fc_plan
from hostagent.connectors.iscsi import IscsiConnector
from hostagent.errors import HostAgentError, LoginFailed, LunNotFound, WwnMismatch
from hostagent.host import fc, scsi
from hostagent.host.fs import SYS_BLOCK, HostFS, dev_node
from hostagent.host.multipath import MapInfo, MapPath, Multipath, MultipathdClient
from hostagent.metrics import Metrics
from hostagent.models import (
    Attachment,
    Device,
    FcVolume,
    IscsiTarget,
    IscsiVolume,
    PathInfo,
    Status,
)
from hostagent.service import Service

log = logging.getLogger("hostagent.health")

NO_SESSION = "no session"
LOGGED_IN = "LOGGED_IN"
RUNNING = "running"
OFFLINE_STATES = frozenset({"offline", "transport-offline"})
BAD_CHECKER = frozenset({"faulty", "shaky"})
UNSEEN = "seen by no online HBA"  # connectors/fc.py plan()'s words for a target nobody sees
HISTORY = 50  # transitions remembered (all attachments)
ACTIONS = 20  # self-heal actions remembered


class Verdict(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILED = "failed"


_RANK = {Verdict.HEALTHY: 0, Verdict.DEGRADED: 1, Verdict.FAILED: 2}


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    return max(verdicts, key=_RANK.__getitem__, default=Verdict.HEALTHY)


@dataclass(frozen=True)
class HealthOptions:
    interval: float = 30.0  # s between periodic checks
    self_heal: bool = True
    heal_interval: float = 60.0  # s at least between two repairs of the same path
    probe: bool = True  # one-block O_DIRECT read of each device
    probe_timeout: float = 10.0


# ---- observations (what gathering produces) ---------------------------------------------

@dataclass(frozen=True)
class PathObservation:
    label: str  # iSCSI: the portal; FC: "HBA -> target"
    target: str | None  # IQN or target WWPN
    hctl: str | None = None  # None: nothing to address the LUN through (no session, port down)
    device: str | None = None  # the sd at hctl
    missing_reason: str | None = None  # why there is no disk
    session_state: str | None = None  # iSCSI: LOGGED_IN, FAILED, FREE
    connection_state: str | None = None  # iSCSI: up, down, failed, bound
    rport_state: str | None = None  # FC: Online, Blocked, ...
    sd_state: str | None = None  # running, blocked, offline, transport-offline
    wwid: str | None = None
    size_bytes: int | None = None
    holders: tuple[str, ...] = ()
    in_map: bool | None = None  # None: no map expected or none present
    dm_state: str | None = None  # multipathd: active / failed
    checker: str | None = None  # multipathd: ready / faulty / ghost ...


@dataclass(frozen=True)
class MapObservation:
    expected: bool
    device: str | None = None  # dm-N
    features: str | None = None
    size_bytes: int | None = None
    multipathd_error: str | None = None  # multipathd did not answer: path states unknown


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    seconds: float
    timed_out: bool = False
    error: str | None = None


@dataclass(frozen=True)
class AttachmentObservation:
    attachment_id: str
    volume_id: str | None
    protocol: str
    device: str  # the device node the consumer uses
    wwn: str
    paths: tuple[PathObservation, ...]
    map: MapObservation
    remote_ports: tuple[tuple[str, str, str], ...] = ()  # FC: (rport, WWPN, state)
    probe: ProbeResult | None = None
    notes: tuple[str, ...] = ()  # problems that are not a path of their own


# ---- evaluation (pure) -------------------------------------------------------------------

@dataclass(frozen=True)
class PathHealth:
    obs: PathObservation
    state: str  # up, down, missing
    problems: tuple[str, ...]


@dataclass(frozen=True)
class AttachmentHealth:
    obs: AttachmentObservation
    verdict: Verdict
    reasons: tuple[str, ...]
    paths: tuple[PathHealth, ...]


def evaluate_path(p: PathObservation, *, wwn: str, map_expected: bool) -> PathHealth:
    if p.hctl is None or p.device is None:
        return PathHealth(p, "missing", (p.missing_reason or f"no disk at {p.hctl}",))
    problems = []
    if p.session_state not in (None, LOGGED_IN):
        problems.append(f"session {p.session_state}")
    if p.connection_state not in (None, "up"):
        problems.append(f"connection {p.connection_state}")
    if p.rport_state not in (None, fc.ONLINE):
        problems.append(f"remote port {p.rport_state}")
    if p.sd_state != RUNNING:
        problems.append(f"disk {p.device} {p.sd_state or 'gone'}")
    if p.wwid is not None and p.wwid != wwn:
        problems.append(f"disk {p.device} reports WWID {p.wwid}")
    if map_expected and p.in_map is False:
        problems.append("not in the map")
    if p.dm_state == "failed" or p.checker in BAD_CHECKER:
        problems.append(f"multipathd: {p.dm_state}/{p.checker}")
    return PathHealth(p, "down" if problems else "up", tuple(problems))


def evaluate(obs: AttachmentObservation) -> AttachmentHealth:
    """The verdict on one attachment: failed when no I/O can get through, degraded
    when it can but not on every expected path (or something is off), else healthy."""
    paths = tuple(evaluate_path(p, wwn=obs.wwn, map_expected=obs.map.expected)
                  for p in obs.paths)
    verdicts = [Verdict.HEALTHY]
    reasons = [f"{ph.obs.label}: {'; '.join(ph.problems)}" for ph in paths if ph.problems]
    up = sum(ph.state == "up" for ph in paths)
    if up == 0:
        verdicts.append(Verdict.FAILED)
        reasons.insert(0, "no working path")
        if obs.map.features and "queue_if_no_path" in obs.map.features:
            reasons.append("I/O is queued (queue_if_no_path)")
    elif up < len(paths):
        verdicts.append(Verdict.DEGRADED)
        reasons.insert(0, f"{up} of {len(paths)} paths up")
    if obs.map.expected and obs.map.device is None:
        verdicts.append(Verdict.FAILED)
        reasons.insert(0, f"multipath map {obs.wwn} is gone")
    if obs.notes:
        verdicts.append(Verdict.DEGRADED)
        reasons += obs.notes
    if obs.map.multipathd_error:
        verdicts.append(Verdict.DEGRADED)
        reasons.append(f"multipathd: {obs.map.multipathd_error}")
    sizes = {p.device: p.size_bytes for p in obs.paths if p.device and p.size_bytes}
    if obs.map.device and obs.map.size_bytes:
        sizes[obs.map.device] = obs.map.size_bytes
    if len(set(sizes.values())) > 1:
        verdicts.append(Verdict.DEGRADED)
        reasons.append("sizes differ: " + ", ".join(f"{d} {s}" for d, s in sorted(sizes.items())))
    if obs.probe is not None and not obs.probe.ok:
        # Slow is not dead: a timed-out read may still complete after a failover.
        verdicts.append(Verdict.DEGRADED if obs.probe.timed_out else Verdict.FAILED)
        reasons.append(f"read probe: {obs.probe.error}")
    return AttachmentHealth(obs, worst(verdicts), tuple(reasons), paths)


class Action(StrEnum):
    LOGIN = "login"  # log a missing session in again (its node record is ours)
    SCAN = "scan"  # targeted scan of the LUN, the disk added to the map
    READD = "readd"  # a running disk missing from the map: re-identified and added back
    REPLACE = "replace"  # an offline disk nobody holds: deleted, the LUN scanned anew


@dataclass(frozen=True)
class HealAction:
    action: Action
    attachment_id: str
    path: PathObservation


def plan_heal(health: AttachmentHealth) -> list[HealAction]:
    """The repairs that apply. None when the map itself is gone: rebuilding a
    device under a consumer is not a repair."""
    obs = health.obs
    if obs.map.expected and obs.map.device is None:
        return []
    actions = []
    for ph in health.paths:
        p = ph.obs
        if ph.state == "up":
            continue
        action = None
        if obs.protocol == ISCSI and p.hctl is None and p.missing_reason == NO_SESSION:
            action = Action.LOGIN
        elif p.hctl and p.device is None and p.session_state in (None, LOGGED_IN):
            action = Action.SCAN
        elif p.device and p.sd_state in OFFLINE_STATES and not p.holders:
            action = Action.REPLACE
        elif p.device and p.sd_state == RUNNING and p.in_map is False and \
                p.wwid == obs.wwn and p.session_state in (None, LOGGED_IN):
            action = Action.READD
        if action is not None:
            actions.append(HealAction(action, obs.attachment_id, p))
    return actions


# ---- gathering (I/O) ---------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    """Host-wide state read once per check."""

    sessions: tuple[scsi.IscsiSession, ...]
    hbas: tuple[fc.FcHba, ...]
    rports: tuple[fc.RemotePort, ...]
    maps: dict[str, MapInfo] | None  # None: multipathd did not answer
    multipathd_error: str | None


def _unique_targets(targets: Iterable[IscsiTarget]) -> list[IscsiTarget]:
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
                        tuple(fc.remote_ports(self.fs)), maps, error)

    def observe(self, att: Attachment, device: Device, snap: Snapshot,
                iface: str | None) -> AttachmentObservation:
        spec = parse(att.connection_info)
        dm = self.multipath.map_device(device.wwn) if device.multipath else None
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
        targets = _unique_targets(device.iscsi_targets or vol.targets)
        if not device.multipath:  # single-path mode: only the path it uses is expected
            used = {(p.target, p.portal) for p in device.paths}
            targets = [t for t in targets if (t.iqn, str(t.portal)) in used]
        sessions = {(s.iqn, str(s.portal)): s for s in snap.sessions
                    if iface is None or s.iface == iface}
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


# ---- self-healing ---------------------------------------------------------------------

class Healer:
    """Carries out HealActions through the native engines' own parts (their
    iscsiadm, disks and map code, their target locks)."""

    def __init__(self, service: Service, fs: HostFS) -> None:
        self.service = service
        self.fs = fs

    async def run(self, action: HealAction) -> str:
        """Do one repair under the attachment's and its targets' locks; what was
        done. Raises HostAgentError when it failed."""
        lock = self.service.attachment_lock(action.attachment_id)
        if lock.locked():
            return "skipped: an operation is under way"
        async with lock:
            att = self.service.store.get(action.attachment_id)
            if att is None or att.status != Status.ATTACHED or att.device is None:
                return "skipped: no longer attached"
            connector = self.service.connectors.get(att.protocol)
            spec = parse(att.connection_info)
            if isinstance(connector, IscsiConnector) and isinstance(spec, IscsiVolume):
                async with connector.locks.hold(t.iqn for t in
                                                (att.device.iscsi_targets or spec.targets)):
                    info = await self._iscsi(connector, spec, att.device, action)
            elif isinstance(connector, FcConnector) and isinstance(spec, FcVolume):
                async with connector.locks.hold(spec.target_keys):
                    info = await self._disk(connector, att.device, action, action.path.hctl,
                                            action.path.target)
            else:
                return "skipped: self-healing needs the native engine"
            self._record(att, action.path.label, info)
            return f"{info.device} ({info.hctl}) is a path of {att.device.path} again"

    async def _iscsi(self, connector: IscsiConnector, vol: IscsiVolume, device: Device,
                     action: HealAction) -> PathInfo:
        p = action.path
        hctl = p.hctl
        if action.action == Action.LOGIN:
            hctl = await self._login(connector, vol, device, p)
        info = await self._disk(connector, device, action, hctl, p.target)
        return replace(info, portal=p.label)

    async def _login(self, connector: IscsiConnector, vol: IscsiVolume, device: Device,
                     p: PathObservation) -> str:
        target = next((t for t in _unique_targets(device.iscsi_targets or vol.targets)
                       if str(t.portal) == p.label and t.iqn == p.target), None)
        if target is None:
            raise LoginFailed(f"{p.label} is not a portal of the volume", portal=p.label)
        iscsiadm = connector.iscsiadm
        if not iscsiadm.has_node(target.iqn, target.portal):
            # The secrets are not stored, so the record cannot be made anew.
            raise LoginFailed(f"no node record of ours for {target.iqn} at {target.portal}",
                              iqn=target.iqn, portal=p.label)
        opts = connector.options
        # Never a logout first: a session that exists (however slow) is iscsid's to recover.
        await iscsiadm.login(target.iqn, target.portal,
                             mutual_chap=bool(vol.chap and vol.chap.mutual),
                             timeout=opts.login_timeout * opts.login_attempts + 15)
        for s in scsi.iscsi_sessions(self.fs):
            if s.iqn == target.iqn and str(s.portal) == p.label and s.iface == opts.iface:
                return f"{s.host}:0:{s.target_id}:{target.lun}"
        raise LoginFailed(f"logged in to {target.iqn} at {p.label} but the kernel shows no "
                          "session", iqn=target.iqn, portal=p.label)

    async def _disk(self, connector: IscsiConnector | FcConnector, device: Device,
                    action: HealAction, hctl: str | None, target: str | None) -> PathInfo:
        """The LUN's disk at hctl made or re-identified, checked, and in the map."""
        if hctl is None:
            raise LunNotFound(f"{action.path.label}: nothing to scan the LUN through")
        devices = connector.devices
        if action.action == Action.READD and action.path.device:
            scsi.rescan_device(self.fs, hctl)  # re-read the identity before trusting it
            sd, created = action.path.device, False
        else:  # a disk at hctl nobody holds is deleted and scanned anew by scan()
            sd, created = await devices.scan(hctl, lambda: LunNotFound(
                f"{action.path.label}: the target has no LUN at {hctl}", hctl=hctl))
        wwid = scsi.wwid(self.fs, hctl)
        if wwid != device.wwn:
            if created:
                await devices.delete_disks([PathInfo(sd, hctl)])
            raise WwnMismatch(f"{sd} ({hctl}) reports {wwid}, not the volume's {device.wwn}",
                              hctl=hctl, wwid=wwid)
        if device.multipath:
            await devices.build_map(device.wwn, [sd])
        return PathInfo(sd, hctl, None, target)

    def _record(self, att: Attachment, label: str, info: PathInfo) -> None:
        """The new disk joins the attachment's device, so a detach removes it."""
        assert att.device is not None
        paths = [p for p in att.device.paths
                 if p.hctl != info.hctl and not (info.portal and p.portal == info.portal)]
        missing = tuple(m for m in att.device.missing if not m.startswith(label))
        self.service.store.update(att.id, device=replace(
            att.device, paths=(*paths, info), missing=missing))


# ---- the monitor --------------------------------------------------------------------------

@dataclass(frozen=True)
class Transition:
    at: float
    attachment_id: str
    before: str
    after: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class HealthReport:
    verdict: Verdict
    checked_at: float
    attachments: tuple[AttachmentHealth, ...]
    self_heal: bool
    history: tuple[Transition, ...] = ()
    actions: tuple[dict[str, Any], ...] = field(default=())


class HealthMonitor:
    def __init__(self, service: Service, fs: HostFS, multipathd: MultipathdClient, *,
                 options: HealthOptions | None = None, metrics: Metrics | None = None,
                 command_timeout: float = 30.0, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.options = options or HealthOptions()
        self.metrics = metrics
        self.clock = clock
        self.monotonic = monotonic
        self.observer = Observer(fs, Multipath(multipathd, fs, timeout=command_timeout))
        self.prober = Prober(fs, self.options.probe_timeout, monotonic)
        self.healer = Healer(service, fs)
        self._last: dict[str, Verdict] = {}
        self._history: deque[Transition] = deque(maxlen=HISTORY)
        self._actions: deque[dict[str, Any]] = deque(maxlen=ACTIONS)
        self._attempts: dict[tuple[str, str], float] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # ---- checks ----------------------------------------------------------------------
    async def check(self) -> HealthReport:
        async with self._lock:  # one gathering at a time (periodic and on demand)
            snap = await self.observer.snapshot()
            observations = [self.observer.observe(att, att.device, snap, self._iface(att))
                            for att in self.service.list()
                            if att.status == Status.ATTACHED and att.device is not None]
            if self.options.probe:
                results = await asyncio.gather(*(self.prober.probe(o.device)
                                                  for o in observations))
                observations = [replace(o, probe=r)
                                for o, r in zip(observations, results, strict=True)]
            healths = tuple(evaluate(o) for o in observations)
            self._transitions(healths)
            self._count(healths)
            return HealthReport(worst(h.verdict for h in healths), self.clock(), healths,
                                self.options.self_heal, tuple(self._history),
                                tuple(self._actions))

    def _iface(self, att: Attachment) -> str | None:
        connector = self.service.connectors.get(att.protocol)
        return connector.options.iface if isinstance(connector, IscsiConnector) else None

    def _transitions(self, healths: Sequence[AttachmentHealth]) -> None:
        seen = set()
        for h in healths:
            att_id = h.obs.attachment_id
            seen.add(att_id)
            before = self._last.get(att_id)
            if before == h.verdict:
                continue
            self._last[att_id] = h.verdict
            self._history.append(Transition(self.clock(), att_id, before or "new",
                                            h.verdict.value, h.reasons))
            if before is not None or h.verdict != Verdict.HEALTHY:
                how = log.info if h.verdict == Verdict.HEALTHY else log.warning
                how("health %s: %s -> %s%s", att_id, before or "new", h.verdict.value,
                    f" ({'; '.join(h.reasons)})" if h.reasons else "")
        for gone in set(self._last) - seen:
            del self._last[gone]

    def _count(self, healths: Sequence[AttachmentHealth]) -> None:
        if self.metrics is None:
            return
        self.metrics.set_health(Counter(h.verdict.value for h in healths),
                                Counter(p.state for h in healths for p in h.paths))

    # ---- self-healing ---------------------------------------------------------------
    async def heal(self, report: HealthReport) -> list[dict[str, Any]]:
        """Run the repairs the report calls for, each path at most once per heal_interval."""
        done = []
        for health in report.attachments:
            for action in plan_heal(health):
                key = (action.attachment_id, action.path.label)
                now = self.monotonic()
                last = self._attempts.get(key)
                if last is not None and now - last < self.options.heal_interval:
                    continue
                self._attempts[key] = now
                done.append(await self._heal_one(action))
        live = {h.obs.attachment_id for h in report.attachments}
        self._attempts = {k: v for k, v in self._attempts.items() if k[0] in live}
        return done

    async def _heal_one(self, action: HealAction) -> dict[str, Any]:
        what = f"{action.action.value} {action.path.label}"
        try:
            message = await self.healer.run(action)
            ok = True
            log.warning("self-heal %s: %s: %s", action.attachment_id, what, message)
        except (HostAgentError, OSError) as err:  # OSError: a sysfs write refused
            ok, message = False, describe(err)
            log.error("self-heal %s: %s failed: %s", action.attachment_id, what, message)
        entry = {"at": self.clock(), "attachment_id": action.attachment_id,
                 "action": action.action.value, "path": action.path.label,
                 "outcome": "ok" if ok else "failed", "message": message}
        self._actions.append(entry)
        if self.metrics is not None and not message.startswith("skipped"):
            self.metrics.heal_action(action.action.value, ok)
        return entry

    async def run_once(self) -> HealthReport:
        report = await self.check()
        if self.options.self_heal and report.verdict != Verdict.HEALTHY:
            await self.heal(report)
        return report

    # ---- the periodic loop ------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a bug in one round must not end the checks for good
                log.exception("health check failed")
            await asyncio.sleep(self.options.interval)


# ---- JSON form ---------------------------------------------------------------------------

def _path_dict(ph: PathHealth) -> dict[str, Any]:
    p = ph.obs
    return {"path": p.label, "target": p.target, "hctl": p.hctl, "device": p.device,
            "state": ph.state, "problems": list(ph.problems),
            "session_state": p.session_state, "connection_state": p.connection_state,
            "remote_port_state": p.rport_state, "sd_state": p.sd_state, "in_map": p.in_map,
            "multipath_state": f"{p.dm_state}/{p.checker}" if p.dm_state else None,
            "size_bytes": p.size_bytes}


def _transition_dict(t: Transition) -> dict[str, Any]:
    return {"at": t.at, "attachment_id": t.attachment_id, "from": t.before, "to": t.after,
            "reasons": list(t.reasons)}


def attachment_health_dict(h: AttachmentHealth, history: Iterable[Transition]
                           ) -> dict[str, Any]:
    o = h.obs
    return {
        "id": o.attachment_id, "volume_id": o.volume_id, "protocol": o.protocol,
        "device": o.device, "wwn": o.wwn, "status": h.verdict.value, "reasons": list(h.reasons),
        "paths_up": sum(p.state == "up" for p in h.paths), "paths_expected": len(h.paths),
        "paths": [_path_dict(p) for p in h.paths],
        "map": {"expected": o.map.expected, "device": o.map.device,
                "features": o.map.features, "size_bytes": o.map.size_bytes},
        "remote_ports": [{"name": n, "port_name": w, "state": s} for n, w, s in o.remote_ports],
        "probe": None if o.probe is None else {"ok": o.probe.ok,
                                               "seconds": round(o.probe.seconds, 3),
                                               "error": o.probe.error},
        "history": [_transition_dict(t) for t in history if t.attachment_id == o.attachment_id],
    }


def report_to_dict(report: HealthReport) -> dict[str, Any]:
    return {
        "status": report.verdict.value, "checked_at": report.checked_at,
        "attachments": [attachment_health_dict(h, report.history) for h in report.attachments],
        "self_heal": {"enabled": report.self_heal, "actions": list(report.actions)},
        "history": [_transition_dict(t) for t in report.history],
    }
