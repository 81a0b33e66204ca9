"""Test doubles for the host seams.

FakeExecutor follows Kubernetes' FakeExec: a test scripts the commands it
expects and their replies; any other command fails the test loudly, and
assert_done() fails when a scripted command never ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from socket import AF_INET, AF_INET6

from hostagent.errors import CommandFailed, CommandTimeout
from hostagent.host.executor import CommandResult, check_args, redact
from hostagent.host.net import Address


@dataclass(frozen=True)
class FakeCall:
    """One run() call as the code under test made it. argv is raw, not
    redacted, so a test can assert that a secret never reached argv."""

    argv: tuple[str, ...]
    secrets: tuple[str, ...]
    input: str | None
    timeout: float
    ok_codes: tuple[int, ...]


@dataclass
class _Script:
    argv: tuple[str, ...]
    exact: bool
    returncode: int
    stdout: str
    stderr: str
    times: int
    delay: float
    timeout: bool
    side_effect: Callable[[], None] | None

    def matches(self, argv: tuple[str, ...]) -> bool:
        if self.exact:
            return argv == self.argv
        return argv[: len(self.argv)] == self.argv

    def __str__(self) -> str:
        how = "exact" if self.exact else "prefix"
        return f"{self.argv} ({how}, {self.times} left)"


class FakeExecutor:
    """An Executor that replays scripted replies; see the module docstring."""

    def __init__(self) -> None:
        self.calls: list[FakeCall] = []
        self.unexpected: list[tuple[str, ...]] = []
        self._scripts: list[_Script] = []

    def expect(
        self,
        argv_prefix_or_exact: Sequence[str],
        *,
        returncode: int = 0,
        stdout: str = "",
        stderr: str = "",
        exact: bool = True,
        times: int = 1,
        delay: float = 0.0,
        timeout: bool = False,
        side_effect: Callable[[], None] | None = None,
    ) -> None:
        """Queue a reply for the next matching command.

        `timeout=True`, or a `delay` longer than the call's timeout, makes the
        command raise CommandTimeout. `side_effect` runs when the command is
        consumed (after `delay`), e.g. to create the sysfs entries the real
        command would; an exception it raises propagates from run().
        """
        if isinstance(argv_prefix_or_exact, str):
            raise TypeError("expect() takes an argv list, not a string")
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        self._scripts.append(_Script(
            tuple(argv_prefix_or_exact), exact, returncode, stdout, stderr, times, delay,
            timeout, side_effect,
        ))

    async def run(
        self,
        argv: Sequence[str],
        *,
        ok_codes: Collection[int] = (0,),
        timeout: float,
        secrets: Collection[str] = (),
        input: str | None = None,
    ) -> CommandResult:
        raw = check_args(argv, timeout, secrets)
        self.calls.append(FakeCall(raw, tuple(secrets), input, timeout, tuple(ok_codes)))
        script = self._take(raw)
        if script is None:
            self.unexpected.append(raw)
            pending = "".join(f"\n  {s}" for s in self._scripts) or " none"
            raise AssertionError(f"unexpected command: {raw}\nstill expected:{pending}")
        timed_out = script.timeout or script.delay > timeout
        if script.delay:
            await asyncio.sleep(min(script.delay, timeout))
        if script.side_effect is not None:
            script.side_effect()
        shown = [redact(arg, secrets) for arg in raw]
        if timed_out:
            raise CommandTimeout(shown, timeout)
        stderr = redact(script.stderr, secrets)
        if script.returncode not in ok_codes:
            raise CommandFailed(shown, script.returncode, stderr)
        return CommandResult(
            tuple(shown), script.returncode, redact(script.stdout, secrets), stderr,
            min(script.delay, timeout),
        )

    def _take(self, argv: tuple[str, ...]) -> _Script | None:
        for script in self._scripts:
            if script.matches(argv):
                script.times -= 1
                if script.times == 0:
                    self._scripts.remove(script)
                return script
        return None

    def commands(self) -> list[tuple[str, ...]]:
        return [call.argv for call in self.calls]

    def assert_done(self) -> None:
        """Fail if a scripted command never ran or an unexpected one did."""
        problems = [f"not run: {s}" for s in self._scripts]
        problems += [f"unexpected: {argv}" for argv in self.unexpected]
        if problems:
            raise AssertionError("FakeExecutor:\n  " + "\n  ".join(problems))


class FakeClock:
    """A Clock that moves only when told or slept on (Kubernetes' FakeClock):
    a sleep returns at once, advances the time and is recorded."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.now = start
        self._wall_offset = wall - start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self._wall_offset

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)  # still a suspension point, as a real sleep is


# ---- this host's own network (host.net.LocalNet) ---------------------------------

LINK_SCOPE, HOST_SCOPE = 253, 254  # RT_SCOPE_LINK, RT_SCOPE_HOST

# The dev host's addresses as the kernel dumps them (IPv4, then IPv6, each by ifindex);
# psutil lists the same: {'lo': [...], 'eth0': [...]} with IPv4 before IPv6.
DUMP = [
    Address("lo", AF_INET, "127.0.0.1", HOST_SCOPE),
    Address("eth0", AF_INET, "192.0.2.2"),
    Address("lo", AF_INET6, "::1", HOST_SCOPE),
    Address("eth0", AF_INET6, "fd00::2"),
    Address("eth0", AF_INET6, "fe80::fc:ff:fe00:1", LINK_SCOPE),
]


@dataclass
class FakeLocalNet:
    """The host's own network as a test sets it; records what was asked."""

    sources: list[str | None] = field(default_factory=lambda: ["192.0.2.2", None])
    dump: list[Address] = field(default_factory=lambda: list(DUMP))
    dsc: bool = False
    asked: list[str] = field(default_factory=list)

    def default_sources(self) -> list[str | None]:
        self.asked.append("default_sources")
        return list(self.sources)

    def addresses(self) -> list[Address]:
        self.asked.append("addresses")
        return list(self.dump)

    def http_ok(self, host: str, port: int, path: str, timeout: float) -> bool:
        self.asked.append(f"http {host}:{port}{path} {timeout}")
        return self.dsc
