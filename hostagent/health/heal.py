"""Self-healing: the repairs plan_heal chose, made by the engine under the same
locks as attach and detach; never a logout."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from hostagent.agent.service import Service
from hostagent.connection_info import parse
from hostagent.connectors.base import Repairer
from hostagent.connectors.devices import describe
from hostagent.errors import HostAgentError, NotFound, PortalResting
from hostagent.health.verdict import HealAction
from hostagent.models import Status


class HealOutcome(StrEnum):
    REPAIRED = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # nothing was tried: not counted as a repair


@dataclass(frozen=True)
class HealResult:
    outcome: HealOutcome
    message: str


class Healer:
    def __init__(self, service: Service) -> None:
        self.service = service

    async def run(self, action: HealAction) -> HealResult:
        """Do one repair under the attachment's lock (the engine takes its targets')."""
        lock = self.service.attachment_lock(action.attachment_id)
        if lock.locked():
            return HealResult(HealOutcome.SKIPPED, "an operation is under way")
        async with lock:
            try:
                att = self.service.get(action.attachment_id)
            except NotFound:
                return HealResult(HealOutcome.SKIPPED, "no longer attached")
            if att.status != Status.ATTACHED or att.device is None:
                return HealResult(HealOutcome.SKIPPED, "no longer attached")
            engine = self.service.connectors.get(att.protocol)
            if not isinstance(engine, Repairer):
                return HealResult(HealOutcome.SKIPPED, "this engine does not self-heal")
            try:
                path = await engine.repair(parse(att.connection_info), att.device,
                                           action.repair())
            except PortalResting as err:
                return HealResult(HealOutcome.SKIPPED, err.message)
            except (HostAgentError, OSError) as err:  # OSError: a sysfs write refused
                return HealResult(HealOutcome.FAILED, describe(err))
            self.service.record_path(att.id, action.path.label, path)
            return HealResult(HealOutcome.REPAIRED,
                              f"{path.device} ({path.hctl}) is a path of {att.device.path} again")
