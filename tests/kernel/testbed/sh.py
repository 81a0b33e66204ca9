"""Subprocess and waiting helpers for the test bed (not product code).

The product reaches the host only through its Executor seam; the test bed
drives the raw tools directly, with a timeout on every call.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class CommandError(AssertionError):
    """A test-bed command ended with an unexpected status."""


def run(
    argv: Sequence[str],
    *,
    ok: Sequence[int] = (0,),
    timeout: float = 60.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if proc.returncode not in ok:
        raise CommandError(
            f"{' '.join(argv)} -> rc {proc.returncode}\n"
            f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
        )
    return proc


def write(path: str | Path, value: str) -> None:
    Path(path).write_text(value)


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
) -> T:
    """Return probe()'s first truthy value; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
