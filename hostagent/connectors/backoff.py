"""Failed portals rest before they are tried again.

A portal that did not answer (connection refused or timed out) is not logged in
to again, by an attach or by self-healing, before `interval` seconds have
passed: a dead portal then costs one login timeout per interval instead of one
per attach, and a fleet of attaches cannot turn into a login storm towards it.
Refused credentials are not the portal's fault and do not make it rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from hostagent.errors import CommandTimeout, HostAgentError, PortalResting, PortalUnreachable
from hostagent.host.clock import Clock


@dataclass(frozen=True)
class _Failure:
    at: float
    reason: str


class PortalBackoff:
    def __init__(self, clock: Clock, interval: float) -> None:
        self.clock, self.interval = clock, interval
        self._failed: dict[str, _Failure] = {}

    def check(self, portal: str) -> None:
        """Raise PortalResting while `portal` may not be tried yet."""
        failure = self._failed.get(portal)
        if failure is None:
            return
        left = failure.at + self.interval - self.clock.monotonic()
        if left <= 0:
            return
        retry_at = self.clock.time() + left
        raise PortalResting(
            f"{portal} failed {self.interval - left:.0f} s ago ({failure.reason}); not tried "
            f"again for {left:.0f} s", portal=portal, retry_after=round(left, 1),
            retry_at=round(retry_at, 1))

    def record(self, portal: str, err: BaseException | None) -> None:
        """The outcome of a login or a discovery at `portal`: None for success."""
        if err is None:
            self._failed.pop(portal, None)
        elif self.interval > 0 and isinstance(err, PortalUnreachable | CommandTimeout):
            reason = err.message if isinstance(err, HostAgentError) else str(err)
            self._failed[portal] = _Failure(self.clock.monotonic(), reason)
