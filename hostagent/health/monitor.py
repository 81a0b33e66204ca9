"""The health monitor: periodic and on-demand checks, transition history,
metrics, self-healing; and the JSON form of its reports."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hostagent.agent.metrics import Metrics
from hostagent.agent.service import Service
from hostagent.health.heal import Healer, HealOutcome
from hostagent.health.observe import Observer, Prober
from hostagent.health.verdict import (
    ACTIONS,
    HISTORY,
    AttachmentHealth,
    HealAction,
    HealthOptions,
    PathHealth,
    Verdict,
    evaluate,
    plan_heal,
    worst,
)
from hostagent.host.clock import SYSTEM_CLOCK, Clock
from hostagent.host.fs import HostFS
from hostagent.host.multipath import Multipath, MultipathdClient
from hostagent.models import (
    RESTORING,
    Attachment,
    Status,
)

# ---- the monitor --------------------------------------------------------------------------

@dataclass(frozen=True)
class Transition:
    at: float
    attachment_id: str
    before: str
    after: str
    reasons: tuple[str, ...]

log = logging.getLogger("hostagent.health")


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
                 command_timeout: float = 30.0, clock: Clock = SYSTEM_CLOCK) -> None:
        self.service = service
        self.options = options or HealthOptions()
        self.metrics = metrics
        self.clock = clock
        self.observer = Observer(fs, Multipath(multipathd, fs, timeout=command_timeout))
        self.prober = Prober(fs, self.options.probe_timeout, clock.monotonic)
        self.healer = Healer(service)
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
            observations = [self.observer.observe(att, self.service.spec_of(att), att.device,
                                                  snap, self._iface(att))
                            for att in self.service.list()
                            if att.status == Status.ATTACHED and att.device is not None
                            and att.phase != RESTORING]  # not yet made again
            if self.options.probe:
                results = await self.prober.probe_all([o.device for o in observations])
                observations = [replace(o, probe=r)
                                for o, r in zip(observations, results, strict=True)]
            healths = tuple(evaluate(o) for o in observations)
            self._transitions(healths)
            self._count(healths)
            return HealthReport(worst(h.verdict for h in healths), self.clock.time(), healths,
                                self.options.self_heal, tuple(self._history),
                                tuple(self._actions))

    def _iface(self, att: Attachment) -> str | None:
        engine = self.service.connectors.get(att.protocol)
        return engine.session_iface if engine is not None else None

    def _transitions(self, healths: Sequence[AttachmentHealth]) -> None:
        seen = set()
        for h in healths:
            att_id = h.obs.attachment_id
            seen.add(att_id)
            before = self._last.get(att_id)
            if before == h.verdict:
                continue
            self._last[att_id] = h.verdict
            self._history.append(Transition(self.clock.time(), att_id, before or "new",
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
                now = self.clock.monotonic()
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
        result = await self.healer.run(action)
        how = log.error if result.outcome == HealOutcome.FAILED else log.warning
        how("self-heal %s: %s %s: %s", action.attachment_id, what, result.outcome.value,
            result.message)
        entry = {"at": self.clock.time(), "attachment_id": action.attachment_id,
                 "action": action.action.value, "path": action.path.label,
                 "outcome": result.outcome.value, "message": result.message}
        self._actions.append(entry)
        if self.metrics is not None and result.outcome != HealOutcome.SKIPPED:
            self.metrics.heal_action(action.action.value,
                                     result.outcome == HealOutcome.REPAIRED)
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
            await self.clock.sleep(self.options.interval)


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
