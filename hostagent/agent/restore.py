"""Restore at start-up: attachments recorded `attached` whose device is gone (a
reboot) are made again from what the host keeps, while the API serves.

Each runs under its attachment's lock (the engines take their target locks), all
in parallel. The engine logs in from hostagent's own node records (the store
keeps no secret), scans the recorded targets and accepts only the recorded WWID.
A volume the array no longer exports there, or that is another volume now, is
`failed` with the reason at once. A failure that may pass (a portal not up yet:
after a site power loss the arrays come back after their hosts) is tried again
on a time policy, RestorePolicy ([DEFAULT] restore_*): waits growing to a cap,
never before a resting portal may be tried, no try started later than
restore_timeout after start-up. The attachment stays `attached`, phase
`restoring`, meanwhile.

Waits for locks are no part of a try: the attachment's lock is taken before the
try's clock starts, and [timeouts] attach counts from the engine's first progress
report, which the engines make right after taking their target locks (all of a
K2 host's volumes share one target, so their restores run one after the other).
Hence the longest a restore takes: RestorePolicy.timeout + 2 x [timeouts] attach
(config.Config.restore_deadline), which `hostagent-cli wait` in the unit covers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum

from hostagent.agent.service import Service
from hostagent.connection_info import parse
from hostagent.errors import (
    DeviceTimeout,
    HostAgentError,
    InvalidRequest,
    LunNotFound,
    NoPath,
    NotFound,
    WwidInUse,
    WwnMismatch,
)
from hostagent.host.clock import SYSTEM_CLOCK, Clock
from hostagent.models import RESTORING, Attachment, Device, Status

log = logging.getLogger("hostagent.restore")
# The array no longer exports the volume there, or something else is there now.
FINAL = (LunNotFound, WwnMismatch, WwidInUse, InvalidRequest)


@dataclass(frozen=True)
class RestorePolicy:
    """How long restores are tried; config.py [DEFAULT] restore_timeout,
    restore_retry_interval and restore_retry_max_interval."""

    timeout: float = 1800.0  # s after start-up after which no try starts; 0: one try
    interval: float = 10.0  # s after the first failed try, doubled after each further one
    max_interval: float = 60.0  # s the wait between two tries grows to


def next_wait(policy: RestorePolicy, failed_tries: int, retry_after: float = 0.0) -> float:
    """Seconds before the next try once `failed_tries` have failed: never before a
    resting portal may be tried (`retry_after`), which would fail without a login."""
    backoff = policy.interval * 2.0 ** min(failed_tries - 1, 32)
    return max(min(backoff, policy.max_interval), retry_after)


class Outcome(StrEnum):
    RESTORED = "restored"
    FAILED = "failed"
    GONE = "gone"  # detached or changed by someone else meanwhile: not ours to count


class _TryDeadline:
    """One try's asyncio deadline. Until the engine's first progress report it
    bounds only the wait for the target locks; from then on it is [timeouts] attach."""

    def __init__(self, scope: asyncio.Timeout, limit: float, att_id: str) -> None:
        self.scope, self.limit, self.att_id = scope, limit, att_id
        self.began = asyncio.get_running_loop().time()
        self.holding = False

    def progress(self, phase: str) -> None:
        if not self.holding and not self.scope.expired():
            self.holding = True
            now = asyncio.get_running_loop().time()
            self.scope.reschedule(now + self.limit)
            if now - self.began >= 1.0:
                log.info("restore %s: held its target locks after %.0f s of waiting for "
                         "other operations on the same targets", self.att_id, now - self.began)
        log.debug("restore %s: %s", self.att_id, phase)


class Restorer:
    def __init__(self, service: Service, *, clock: Clock = SYSTEM_CLOCK,
                 policy: RestorePolicy = RestorePolicy()) -> None:
        self.service, self.clock, self.policy = service, clock, policy

    def pending(self) -> list[str]:
        return [a.id for a in self.service.list()
                if a.status == Status.ATTACHED and a.phase == RESTORING]

    async def run(self) -> dict[str, int]:
        """Restore every pending attachment; how many were restored and failed (one
        detached or changed meanwhile is neither)."""
        pending = self.pending()
        if not pending:
            return {"restored": 0, "failed": 0}
        start = self.clock.monotonic()
        log.info("restoring %d attachments: %s", len(pending), self._policy_text())
        outcomes = Counter(await asyncio.gather(
            *(self.restore(att_id, start + self.policy.timeout) for att_id in pending)))
        log.info("restored %d of %d attachments in %.1f s; %d failed, %d detached or changed "
                 "meanwhile", outcomes[Outcome.RESTORED], len(pending),
                 self.clock.monotonic() - start, outcomes[Outcome.FAILED],
                 outcomes[Outcome.GONE])
        return {"restored": outcomes[Outcome.RESTORED], "failed": outcomes[Outcome.FAILED]}

    def _policy_text(self) -> str:
        p, limit = self.policy, self.service.attach_timeout
        tries = "one try (restore_timeout 0)" if p.timeout == 0 else (
            f"tries until {p.timeout:g} s after start-up (restore_timeout), "
            f"{p.interval:g} s apart growing to {p.max_interval:g} s")
        return f"{tries}; each try {limit:g} s once it holds its target locks"

    async def restore(self, att_id: str, deadline: float) -> Outcome:
        """Try until restored, failed for good, or no try may start before `deadline`
        (on the clock)."""
        failed_tries = 0
        while True:
            result = await self._try(att_id, deadline)
            if not isinstance(result, HostAgentError):
                return result
            failed_tries += 1
            if isinstance(result, FINAL):
                return self._failed(att_id, result)
            wait = next_wait(self.policy, failed_tries,
                             float(result.details.get("retry_after", 0)))
            left = deadline - self.clock.monotonic()
            if wait > left:
                return self._failed(att_id, result, self._gave_up(failed_tries))
            log.warning("restore %s: try %d failed (%s: %s); next try in %g s, %.0f s left of "
                        "restore_timeout", att_id, failed_tries, result.code, result.message,
                        wait, left)
            await self.clock.sleep(wait)

    def _gave_up(self, tries: int) -> str:
        if self.policy.timeout == 0:
            return "tried once (restore_timeout 0)"
        return (f"still failing after {tries} tries, and the next would start after "
                f"{self.policy.timeout:g} s (restore_timeout)")

    async def _try(self, att_id: str, deadline: float) -> Outcome | HostAgentError:
        # Waiting here is no part of the try: the holder's own timeout ends its operation.
        async with self.service.attachment_lock(att_id):
            try:
                att = self.service.get(att_id)
            except NotFound:
                att = None
            if att is None or att.status != Status.ATTACHED or att.phase != RESTORING \
                    or att.device is None:
                log.info("restore %s: detached or changed meanwhile; left as it is", att_id)
                return Outcome.GONE
            try:
                device = await self._engine_try(att, att.device, deadline)
            except HostAgentError as err:
                return err
            except Exception as exc:  # a bug must not leave the volume restoring for ever
                return HostAgentError(f"{type(exc).__name__}: {exc}")
            try:
                self.service.store.update(att.id, device=device, phase=None, last_error=None)
            except Exception as exc:  # made but not recorded: undone, never left unknown
                await self.service.undo_unrecorded(att.id, parse(att.connection_info), device,
                                                   exc)
                return Outcome.FAILED
            log.info("restored %s: %s (%s, %d paths)", att.id, device.path, device.wwn,
                     len(device.paths))
            return Outcome.RESTORED

    async def _engine_try(self, att: Attachment, recorded: Device, deadline: float) -> Device:
        engine = self.service.engine_for(att.protocol)
        limit = self.service.attach_timeout
        # The wait for the target locks is bounded by what is left of restore_timeout,
        # and at least by [timeouts] attach (a last try may start just before the end).
        lock_wait = max(deadline - self.clock.monotonic(), limit)
        scope = asyncio.timeout(lock_wait)
        tried = _TryDeadline(scope, limit, att.id)
        try:
            async with scope:
                return await engine.restore(parse(att.connection_info), recorded,
                                            progress=tried.progress,
                                            claims=self.service.claims_for(att.id))
        except TimeoutError:
            if tried.holding:
                raise DeviceTimeout(f"the restore did not finish within {limit:g} s",
                                    timeout=limit) from None
            raise DeviceTimeout(f"waited {lock_wait:g} s for the target locks, held by other "
                                "operations on the same targets", timeout=lock_wait) from None

    def _failed(self, att_id: str, err: HostAgentError, gave_up: str | None = None) -> Outcome:
        reason = "the array no longer exports the volume there" if isinstance(
            err, LunNotFound | NoPath) else "the volume could not be made again"
        if gave_up is not None:
            reason = f"{reason}, {gave_up}"
        log.error("restore %s failed: %s: %s", att_id, reason, err.message)
        error = err.to_dict()
        error["message"] = f"restore after start-up: {reason}: {err.message}"
        self.service.store.update(att_id, status=Status.FAILED, phase=None, last_error=error)
        return Outcome.FAILED
