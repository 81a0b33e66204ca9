"""Restore at start-up: attachments recorded `attached` whose device is gone (a
reboot) are made again from what the host keeps, while the API serves.

Each runs under its attachment's lock (the engines take their target locks), all
in parallel. The engine logs in from hostagent's own node records (the store
keeps no secret), scans the recorded targets and accepts only the recorded WWID.
A volume the array no longer exports there, or that is another volume now, is
`failed` with the reason; a failure that may pass (a portal not up yet) is tried
again a few times first. The attachment stays `attached`, phase `restoring`,
meanwhile.
"""

from __future__ import annotations

import asyncio
import logging

from hostagent.agent.service import Service
from hostagent.connection_info import parse
from hostagent.errors import (
    DeviceTimeout,
    HostAgentError,
    InvalidRequest,
    LunNotFound,
    NoPath,
    WwidInUse,
    WwnMismatch,
)
from hostagent.host.clock import SYSTEM_CLOCK, Clock
from hostagent.models import RESTORING, Status

log = logging.getLogger("hostagent.restore")
# The array no longer exports the volume there, or something else is there now.
FINAL = (LunNotFound, WwnMismatch, WwidInUse, InvalidRequest)


class Restorer:
    def __init__(self, service: Service, *, clock: Clock = SYSTEM_CLOCK, attempts: int = 5,
                 interval: float = 10.0) -> None:
        self.service, self.clock = service, clock
        self.attempts, self.interval = attempts, interval

    def pending(self) -> list[str]:
        return [a.id for a in self.service.list()
                if a.status == Status.ATTACHED and a.phase == RESTORING]

    async def run(self) -> dict[str, int]:
        """Restore every pending attachment; how many were restored and failed."""
        pending = self.pending()
        start = self.clock.monotonic()
        outcomes = await asyncio.gather(*(self.restore(att_id) for att_id in pending))
        counts = {"restored": sum(outcomes), "failed": len(outcomes) - sum(outcomes)}
        if pending:
            log.info("restored %d of %d attachments in %.1f s", counts["restored"],
                     len(pending), self.clock.monotonic() - start)
        return counts

    async def restore(self, att_id: str) -> bool:
        for attempt in range(1, self.attempts + 1):
            err = await self._try(att_id)
            if err is None:
                return True
            if isinstance(err, FINAL) or attempt == self.attempts:
                self._failed(att_id, err)
                return False
            # A portal that just failed rests: the next try waits until it may be tried.
            wait = max(self.interval, float(err.details.get("retry_after", 0)))
            log.warning("restore %s: %s; trying again in %g s", att_id, err.message, wait)
            await self.clock.sleep(wait)
        return False

    async def _try(self, att_id: str) -> HostAgentError | None:
        async with self.service.attachment_lock(att_id):
            att = self.service.get(att_id)
            if att.status != Status.ATTACHED or att.phase != RESTORING or att.device is None:
                return None  # detached or changed meanwhile: nothing to restore
            engine = self.service.engine_for(att.protocol)
            timeout = self.service.attach_timeout
            try:
                async with asyncio.timeout(timeout):
                    device = await engine.restore(parse(att.connection_info), att.device,
                                                  claims=self.service.claims_for(att.id))
            except TimeoutError:
                return DeviceTimeout(f"the restore did not finish within {timeout:g} s")
            except HostAgentError as err:
                return err
            except Exception as exc:  # a bug must not leave the volume restoring for ever
                return HostAgentError(f"{type(exc).__name__}: {exc}")
            self.service.store.update(att.id, device=device, phase=None, last_error=None)
            log.info("restored %s: %s (%s, %d paths)", att.id, device.path, device.wwn,
                     len(device.paths))
            return None

    def _failed(self, att_id: str, err: HostAgentError) -> None:
        reason = "the array no longer exports the volume there" if isinstance(
            err, LunNotFound | NoPath) else "the volume could not be made again"
        log.error("restore %s failed: %s: %s", att_id, reason, err.message)
        error = err.to_dict()
        error["message"] = f"restore after start-up: {reason}: {err.message}"
        self.service.store.update(att_id, status=Status.FAILED, phase=None, last_error=error)
