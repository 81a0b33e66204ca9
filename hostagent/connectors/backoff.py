"""Failed portals rest before they are tried again.

A portal that did not answer is not tried again, by an attach or by self-healing,
before `interval` seconds have passed: a dead portal then costs one login timeout
per interval instead of one per attach, and a fleet of attaches cannot turn into
a login storm towards it. What rests is what the evidence is about:

- A SendTargets discovery the portal refused, dropped or let time out (iscsiadm 4
  TRANS, 8 TRANS_TIMEOUT, 11 PDU_TIMEOUT: PortalUnreachable) rests the portal as a
  whole, for its next discovery and for every target's login there: a discovery
  session names no target, so its failure is about the portal alone.
- A login that failed the same way rests only that target at that portal. Its exit
  status cannot tell the portal's failure from the target's own: open-iscsi retries
  a refused or unroutable connect until the login timer ends and then reports 8,
  the very status of a connect to the address the target redirected the login to
  (iSCSI login redirection sends each target of a group portal to its own node), and
  11 means the portal took the connection but the target never answered the login.
  Another target's login at the same portal is still tried; a dead portal then
  costs one login timeout per target, not per portal.
- Nothing else rests: refused credentials and other login failures (the target
  answered), iscsid not answering (DaemonUnavailable), and our own command timeout
  (CommandTimeout: iscsiadm did not return, e.g. a slow iscsid) are not about the
  portal.

A success ends the rest it proves wrong: a discovery the portal's; a login its
target's there and the portal's (the portal answered), never another target's.
"""

from __future__ import annotations

from dataclasses import dataclass

from hostagent.errors import PortalResting, PortalUnreachable
from hostagent.host.clock import Clock

_Key = tuple[str, str | None]  # (portal, target IQN); None: the portal as a whole


@dataclass(frozen=True)
class _Failure:
    at: float
    reason: str


class PortalBackoff:
    def __init__(self, clock: Clock, interval: float) -> None:
        self.clock, self.interval = clock, interval
        self._failed: dict[_Key, _Failure] = {}

    def check(self, portal: str, *, iqn: str | None = None) -> None:
        """Raise PortalResting while a login to `iqn` at `portal` (None: a discovery
        there) may not be tried yet."""
        keys: list[_Key] = [(portal, None)] if iqn is None else [(portal, None), (portal, iqn)]
        rests = [(self._left(self._failed[key]), key) for key in keys if key in self._failed]
        left, key = max(rests, key=lambda rest: rest[0], default=(0.0, keys[0]))
        if left <= 0:
            return
        failure, target = self._failed[key], key[1]
        where = portal if target is None else f"{target} at {portal}"
        details = {} if target is None else {"iqn": target}
        raise PortalResting(
            f"{where} failed {self.interval - left:.0f} s ago ({failure.reason}); not tried "
            f"again for {left:.0f} s", portal=portal, retry_after=round(left, 1),
            retry_at=round(self.clock.time() + left, 1), **details)

    def record(self, portal: str, err: BaseException | None, *, iqn: str | None = None) -> None:
        """The outcome of a login to `iqn` at `portal`, or of a discovery there
        (iqn None): None for success."""
        if err is None:
            self._failed.pop((portal, iqn), None)
            self._failed.pop((portal, None), None)
        elif self.interval > 0 and isinstance(err, PortalUnreachable):
            # Rests long over are dropped: one entry per target would otherwise pile up.
            self._failed = {k: f for k, f in self._failed.items() if self._left(f) > 0}
            self._failed[(portal, iqn)] = _Failure(self.clock.monotonic(), err.message)

    def _left(self, failure: _Failure) -> float:
        return failure.at + self.interval - self.clock.monotonic()
