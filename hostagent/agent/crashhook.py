"""A test hook for crash recovery: the agent SIGKILLs itself at a chosen step.

Kernel tests set HOSTAGENT_CRASH_FILE to a file and write into it where to stop:
- a phase prefix ("scanning", "logging out"): when an operation reports a phase
  that starts with it;
- "command:N": right after the N-th host command (a process the executor ran
  or a multipathd socket command) counted from when the file got that text,
  so a test can stop the agent after each command of an operation in turn.
The file is read at every step, so one agent can be set for several crashes.
Without the variable nothing here runs.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Collection, Sequence

from hostagent.host.executor import CommandResult, Executor
from hostagent.host.multipath import MultipathdClient

CRASH_FILE_ENV = "HOSTAGENT_CRASH_FILE"
COMMAND_PREFIX = "command:"

log = logging.getLogger("hostagent.crashhook")


def _sigkill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class CrashHook:
    def __init__(self, path: str, die: Callable[[], None] = _sigkill_self) -> None:
        self.path, self.die = path, die
        self._armed_with = ""
        self._commands = 0

    def _target(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip()
        except OSError:
            return ""

    def _kill(self, where: str) -> None:
        log.critical("test hook %s: killing the agent %s", CRASH_FILE_ENV, where)
        self.die()

    def phase(self, phase: str) -> None:
        at = self._target()
        if at and not at.startswith(COMMAND_PREFIX) and phase.startswith(at):
            self._kill(f"at {phase!r}")

    def command_done(self, what: str) -> None:
        at = self._target()
        if not at.startswith(COMMAND_PREFIX):
            return
        if at != self._armed_with:  # a new target: count from here
            self._armed_with, self._commands = at, 0
        self._commands += 1
        if str(self._commands) == at[len(COMMAND_PREFIX):]:
            self._kill(f"after host command {self._commands} ({what})")


def from_environment() -> CrashHook | None:
    path = os.environ.get(CRASH_FILE_ENV)
    return CrashHook(path) if path else None


class CrashingExecutor:
    """The executor, with the hook told after each command (also a failed one)."""

    def __init__(self, inner: Executor, hook: CrashHook) -> None:
        self.inner, self.hook = inner, hook

    async def run(self, argv: Sequence[str], *, ok_codes: Collection[int] = (0,),
                  timeout: float, secrets: Collection[str] = (),
                  input: str | None = None) -> CommandResult:
        try:
            return await self.inner.run(argv, ok_codes=ok_codes, timeout=timeout,
                                        secrets=secrets, input=input)
        finally:
            self.hook.command_done(argv[0] if argv else "")


class CrashingMultipathd:
    def __init__(self, inner: MultipathdClient, hook: CrashHook) -> None:
        self.inner, self.hook = inner, hook

    async def command(self, cmd: str, *, timeout: float) -> str:
        try:
            return await self.inner.command(cmd, timeout=timeout)
        finally:
            self.hook.command_done(f"multipathd {cmd.split()[0] if cmd else ''}")
