"""What the engine tests share: an engine wired to the real host with its counters,
timings kept per case (written to results/ at the end of a module), and a data
check through the page cache and past it."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from hostagent.connection_info import parse
from hostagent.connectors.base import Connector
from hostagent.host.executor import AsyncExecutor
from hostagent.host.multipath import SocketClient
from hostagent.models import Device
from tests.kernel.testbed.sh import run

MIB = 1024 * 1024


class Exported(Protocol):
    @property
    def connection_info(self) -> dict[str, Any]: ...


class EngineHost:
    """A connector on the real host; attach and detach record a timeline of phases."""

    def __init__(self, connector: Connector, executor: AsyncExecutor, mpd: SocketClient,
                 metrics: dict[str, Any]) -> None:
        self.connector, self.executor, self.mpd, self.metrics = connector, executor, mpd, metrics

    async def attach(self, export: Exported, multipath: bool = True) -> Device:
        start = time.monotonic()
        timeline: list[str] = []

        def progress(phase: str) -> None:
            timeline.append(f"{time.monotonic() - start:6.3f} {phase}")

        device = await self.connector.attach(parse(export.connection_info),
                                             multipath=multipath, progress=progress)
        timeline.append(f"{time.monotonic() - start:6.3f} done")
        self.metrics.setdefault("timelines", []).append(timeline)
        return device

    async def detach(self, export: Exported, device: Device) -> None:
        result = await self.connector.detach(parse(export.connection_info), device)
        assert not result.data_may_be_lost, result.warnings

    def timed(self, name: str, coro: Any) -> Any:
        """Run one operation; keep its wall time, processes and multipathd commands."""
        processes, commands = self.executor.calls, self.mpd.calls
        start = time.monotonic()
        result = asyncio.run(coro)
        self.metrics.setdefault(name, []).append({
            "seconds": round(time.monotonic() - start, 3),
            "processes": self.executor.calls - processes,
            "multipathd_commands": self.mpd.calls - commands,
        })
        return result


def write_metrics(metrics: dict[str, Any], name: str) -> Iterator[dict[str, Any]]:
    """Body of a module fixture: yield the module's metrics, then write them out."""
    yield metrics
    out = Path(os.environ.get("HOSTAGENT_RESULTS", "/tmp")) / name
    out.write_text(json.dumps(metrics, indent=2, sort_keys=True))


def check_data(path: str, size: int = 4 * MIB) -> None:
    pattern = os.urandom(size)
    fd = os.open(path, os.O_RDWR | os.O_SYNC)
    try:
        os.pwrite(fd, pattern, MIB)
        os.fsync(fd)
        assert os.pread(fd, size, MIB) == pattern
    finally:
        os.close(fd)
    # Read back through a fresh open with the page cache dropped: the array has it.
    run(["blockdev", "--flushbufs", path])
    with open(path, "rb") as f:
        f.seek(MIB)
        assert f.read(size) == pattern
