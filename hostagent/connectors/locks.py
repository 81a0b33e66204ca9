"""Per-target locks: attaches to different targets run in parallel.

An asyncio lock orders the operations inside this process. The oslo.concurrency
file lock (when a lock_path is configured) excludes only other processes that
take these same locks under the same lock_path: another process running
hostagent's engines with the same lock_path (a second agent). It does not keep out
os-brick, whose locks have other names (its connect_volume lock is host-wide),
nor iscsiadm or an operator; hostagent-cli's local commands (preflight,
multipath) touch no target and take none. There is no host-wide lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any


def preload() -> Any:
    """oslo.concurrency's lockutils, imported on first use. It pulls in oslo.config and
    about a hundred modules (a sixth of the agent's import, 0.8 s under emulation)
    that nothing before the first operation needs: the daemon calls this in a thread
    once its socket answers, so neither its start nor the first request waits for it."""
    from oslo_concurrency import lockutils

    return lockutils


def _lock_name(key: str) -> str:
    return "hostagent-" + re.sub(r"[^A-Za-z0-9_.-]", "_", key)


class TargetLocks:
    def __init__(self, lock_path: str | None = None) -> None:
        self.lock_path = lock_path
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        # Sorted, so two operations needing overlapping sets cannot deadlock.
        ordered = sorted(set(keys))
        async with contextlib.AsyncExitStack() as stack:
            for key in ordered:
                await stack.enter_async_context(self._locks.setdefault(key, asyncio.Lock()))
                if self.lock_path:
                    stack.push_async_callback(self._release_file, await self._acquire_file(key))
            yield

    async def _acquire_file(self, key: str) -> Any:
        lock = preload().external_lock(_lock_name(key), lock_path=self.lock_path)
        await asyncio.to_thread(lock.acquire)
        return lock

    @staticmethod
    async def _release_file(lock: Any) -> None:
        lock.release()
