"""Per-target locks: different targets in parallel, the same target in turn."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hostagent.connectors.locks import TargetLocks


async def _trace(locks: TargetLocks, keys: list[str], name: str, log: list[str],
                 gate: asyncio.Event) -> None:
    async with locks.hold(keys):
        log.append(f"{name}+")
        await gate.wait()
        log.append(f"{name}-")


def _run(locks: TargetLocks, a: list[str], b: list[str]) -> list[str]:
    async def main() -> list[str]:
        log: list[str] = []
        gate = asyncio.Event()
        tasks = [asyncio.create_task(_trace(locks, a, "a", log, gate)),
                 asyncio.create_task(_trace(locks, b, "b", log, gate))]
        for _ in range(5):
            await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(*tasks)
        return log
    return asyncio.run(main())


def test_different_targets_overlap() -> None:
    assert _run(TargetLocks(), ["iqn.a"], ["iqn.b"])[:2] == ["a+", "b+"]


def test_the_same_target_is_serialised() -> None:
    assert _run(TargetLocks(), ["iqn.a"], ["iqn.a"]) == ["a+", "a-", "b+", "b-"]


def test_overlapping_sets_cannot_deadlock_and_file_locks_are_made(tmp_path: Path) -> None:
    locks = TargetLocks(str(tmp_path))
    assert _run(locks, ["iqn.b", "iqn.a"], ["iqn.a", "iqn.b"]) == ["a+", "a-", "b+", "b-"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostagent-iqn.a", "hostagent-iqn.b"]
