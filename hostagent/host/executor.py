"""Executor: the one way hostagent runs a host command.

Commands are argv lists, never shell strings, so no value (IQN, CHAP secret,
device name) can be parsed as shell syntax. Every call states a timeout because
iscsiadm and multipath can block indefinitely on an unreachable portal or a
wedged daemon, and an agent request must not hang with them.

Unit tests use tests.unit.fakes.FakeExecutor, which scripts replies instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from hostagent.errors import CommandFailed, CommandNotFound, CommandTimeout

log = logging.getLogger("hostagent.host")

REDACTED = "***"

# How long to wait, after SIGKILL, for the child's pipes to close. Only a
# descendant that left our process group (a daemon calling setsid) while
# holding stdout can make this run out; we then give up on it rather than hang.
_REAP_GRACE = 2.0

OK = "ok"
FAILED = "failed"
TIMEOUT = "timeout"
NOT_FOUND = "not_found"


@dataclass(frozen=True)
class CommandResult:
    """A finished command. Secrets passed to run() are already redacted here."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration: float


class Executor(Protocol):
    async def run(
        self,
        argv: Sequence[str],
        *,
        ok_codes: Collection[int] = (0,),
        timeout: float,
        secrets: Collection[str] = (),
        input: str | None = None,
    ) -> CommandResult:
        """Run argv; raise CommandFailed, CommandTimeout or CommandNotFound.

        `secrets` are replaced by "***" in the result, in raised errors and in
        logs. `input` is written to stdin; without it stdin is /dev/null so a
        tool that prompts fails instead of waiting for the timeout.
        """
        ...


def redact(text: str, secrets: Collection[str]) -> str:
    """`text` with every non-empty secret replaced by "***"."""
    _check_secrets(secrets)
    # Longest first, so a secret that contains another is hidden whole rather
    # than leaving its remainder visible.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def check_args(argv: Sequence[str], timeout: float, secrets: Collection[str]) -> tuple[str, ...]:
    """Reject the call mistakes the type checker cannot: a str is a Sequence[str]
    (and a Collection[str]) too, and would run or redact single characters."""
    if isinstance(argv, str):
        raise TypeError(f"argv must be a list of arguments, not a string: {argv!r}")
    if not argv:
        raise ValueError("argv is empty")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    _check_secrets(secrets)
    return tuple(argv)


def _check_secrets(secrets: Collection[str]) -> None:
    if isinstance(secrets, str):
        raise TypeError("secrets must be a collection of strings, not a string")


def _program_name(argv: Sequence[str]) -> str:
    return os.path.basename(argv[0])


class AsyncExecutor:
    """Runs commands with asyncio subprocesses, at most `max_parallel` at once.

    `counts` maps (program basename, outcome) to a number of calls, outcome
    being "ok", "failed", "timeout" or "not_found".
    """

    def __init__(self, max_parallel: int = 16) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, got {max_parallel}")
        self.max_parallel = max_parallel
        self.counts: Counter[tuple[str, str]] = Counter()
        # A Semaphore binds to the loop that first waits on it, so it is made
        # per running loop: the executor can be built before any loop exists
        # and used under successive asyncio.run() calls.
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None

    @property
    def calls(self) -> int:
        return self.counts.total()

    def _limit(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore = asyncio.Semaphore(self.max_parallel)
            self._semaphore_loop = loop
        return self._semaphore

    async def run(
        self,
        argv: Sequence[str],
        *,
        ok_codes: Collection[int] = (0,),
        timeout: float,
        secrets: Collection[str] = (),
        input: str | None = None,
    ) -> CommandResult:
        """See Executor.run. `timeout` bounds the command itself, not the wait
        for a free slot when `max_parallel` commands are already running."""
        argv = check_args(argv, timeout, secrets)
        shown = [redact(arg, secrets) for arg in argv]
        program = _program_name(shown)
        async with self._limit():
            start = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL if input is None else asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    # Tools translate messages and number formats by locale;
                    # parsers expect the C locale's output.
                    env={**os.environ, "LC_ALL": "C"},
                    # Own process group, so a timeout kills what the command
                    # spawned too; a surviving grandchild would hold the pipes
                    # open and keep us waiting for EOF.
                    start_new_session=True,
                )
            except FileNotFoundError:
                self._record(shown, program, NOT_FOUND, None, start)
                raise CommandNotFound(shown[0]) from None
            try:
                async with asyncio.timeout(timeout):
                    out, err = await proc.communicate(
                        None if input is None else input.encode()
                    )
            except TimeoutError:
                await _kill(proc)
                self._record(shown, program, TIMEOUT, proc.returncode, start)
                raise CommandTimeout(shown, timeout) from None
            except BaseException:
                # The caller was cancelled: the command must not outlive it.
                await _kill(proc)
                self._record(shown, program, "cancelled", proc.returncode, start)
                raise
        returncode = proc.returncode
        assert returncode is not None  # communicate() returns after wait()
        stdout = redact(_decode(out), secrets)
        stderr = redact(_decode(err), secrets)
        if returncode not in ok_codes:
            self._record(shown, program, FAILED, returncode, start)
            raise CommandFailed(shown, returncode, stderr)
        duration = self._record(shown, program, OK, returncode, start)
        return CommandResult(tuple(shown), returncode, stdout, stderr, duration)

    def _record(
        self, shown: list[str], program: str, outcome: str, returncode: int | None,
        start: float,
    ) -> float:
        duration = time.monotonic() - start
        if outcome != "cancelled":
            self.counts[(program, outcome)] += 1
        log.debug(
            "ran %s: %s, returncode %s, %.3f s",
            shlex.join(shown), outcome, returncode, duration,
        )
        return duration


def _decode(data: bytes) -> str:
    # A stray non-UTF-8 byte (a device vendor string, say) must not turn a
    # successful command into an exception.
    return data.decode("utf-8", errors="replace")


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the command's process group and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        async with asyncio.timeout(_REAP_GRACE):
            # Draining (rather than wait()) resumes pipes that paused reading
            # on a full buffer; a paused pipe never sees EOF, and wait() waits
            # for EOF on every pipe.
            await proc.communicate()
    except TimeoutError:
        log.warning(
            "pid %s was killed but a process outside its group still holds its output",
            proc.pid,
        )
