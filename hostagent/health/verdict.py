"""Health verdicts (pure): observations of an attachment -> healthy / degraded /
failed with reasons, and the repairs that apply (see hostagent.health)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from hostagent.connection_info import ISCSI
from hostagent.connectors.base import PathRepair, RepairKind
from hostagent.host import fc
from hostagent.host.scsi import LOGGED_IN

NO_SESSION = "no session"
FAILED = "FAILED"  # the kernel's session state while iscsid recovers it
TRANSPORT_OFFLINE = "transport-offline"  # its disks, once recovery_tmo has passed
RUNNING = "running"
OFFLINE_STATES = frozenset({"offline", TRANSPORT_OFFLINE})
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
    if p.session_state == FAILED and p.sd_state == TRANSPORT_OFFLINE:
        problems.append("session in recovery past its replacement_timeout (recovery_tmo): "
                        "I/O on this path fails; iscsid keeps logging in, self-healing "
                        "leaves the session to it")
    elif p.session_state == FAILED:
        problems.append("session in recovery: I/O on this path waits up to its "
                        "replacement_timeout (recovery_tmo)")
    elif p.session_state not in (None, LOGGED_IN):
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


Action = RepairKind  # the repairs plan_heal picks are the ones engines offer


@dataclass(frozen=True)
class HealAction:
    action: Action
    attachment_id: str
    path: PathObservation

    def repair(self) -> PathRepair:
        """What the engine is asked to do."""
        p = self.path
        return PathRepair(self.action, p.label, p.target, p.hctl, p.device)


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
        elif p.device and p.sd_state in OFFLINE_STATES and not p.holders and \
                obs.map.expected:
            # Without a map the sd is the consumer's device itself: open or not, it
            # shows no holder, so it is never deleted under its user.
            action = Action.REPLACE
        elif p.device and p.sd_state == RUNNING and p.in_map is False and \
                p.wwid == obs.wwn and p.session_state in (None, LOGGED_IN):
            action = Action.READD
        if action is not None:
            actions.append(HealAction(action, obs.attachment_id, p))
    return actions


