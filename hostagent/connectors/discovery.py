"""SendTargets answers kept a short while, so a run of attaches to one target asks once.

A K2 array serves every LUN behind one IQN, so each further K2 attach would ask the
same portal the same question. Its cost grows with the host: iscsiadm reads every node
record first, and the array lists every target it has (run F: 0.54 s per attach at
N = 1, 1.37 s at N = 128). An answer is used again only while it is younger than
`reuse_for` seconds and every portal it listed has a logged-in session of ours to the
target, which the caller checks: the paths are then known to work, and a portal the
array added is found by the next discovery after that. Nothing is stored on disk, so
an agent that restarts asks again.
"""

from __future__ import annotations

from dataclasses import dataclass

from hostagent.host.clock import Clock
from hostagent.models import Chap, Portal

_Key = tuple[str, str, Chap | None]  # the portal asked, the target, the discovery CHAP


@dataclass(frozen=True)
class _Answer:
    at: float  # monotonic
    portals: tuple[Portal, ...]


class DiscoveryMemory:
    def __init__(self, clock: Clock, reuse_for: float) -> None:
        self._clock = clock
        self._reuse_for = reuse_for
        self._answers: dict[_Key, _Answer] = {}

    def recall(self, portal: Portal, iqn: str, chap: Chap | None) -> tuple[Portal, ...] | None:
        """The portals of `iqn` that `portal` listed less than `reuse_for` seconds ago."""
        answer = self._answers.get((str(portal), iqn, chap))
        if answer is None or self._clock.monotonic() - answer.at >= self._reuse_for:
            return None
        return answer.portals

    def remember(self, portal: Portal, iqn: str, chap: Chap | None,
                 portals: tuple[Portal, ...]) -> None:
        if self._reuse_for <= 0:
            return
        now = self._clock.monotonic()
        # Expired answers go here, so a host that sees many targets keeps few.
        self._answers = {k: a for k, a in self._answers.items() if now - a.at < self._reuse_for}
        self._answers[(str(portal), iqn, chap)] = _Answer(now, portals)

    def forget(self, portal: Portal, iqn: str, chap: Chap | None) -> None:
        self._answers.pop((str(portal), iqn, chap), None)
