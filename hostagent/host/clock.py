"""Time as a seam: what the code reads of the clock and how it waits.

Built once (SystemClock) and handed down like the Executor, so retries,
back-offs and deadlines are tested with tests/unit/fakes.py FakeClock, which
moves only when something sleeps on it, instead of by patching constants.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines, intervals)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (what is recorded and shown)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
