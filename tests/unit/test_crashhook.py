"""The crash test hook: where it kills, and that it counts host commands per target."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hostagent.agent.crashhook import CrashHook, CrashingExecutor, CrashingMultipathd
from hostagent.errors import CommandFailed
from tests.unit.fakes import FakeExecutor
from tests.unit.preflighthost import StatusMultipathd


class Died(Exception):
    pass


def hook(tmp_path: Path, text: str) -> tuple[CrashHook, Path]:
    path = tmp_path / "crash-at"
    path.write_text(text)

    def die() -> None:
        raise Died()
    return CrashHook(str(path), die), path


def test_a_phase_prefix_kills_at_that_phase_only(tmp_path: Path) -> None:
    h, _ = hook(tmp_path, "scanning")
    h.phase("logging in")
    h.command_done("iscsiadm")
    with pytest.raises(Died):
        h.phase("scanning 2 sessions")


def test_command_n_kills_after_the_nth_command_counted_from_the_new_text(tmp_path: Path
                                                                           ) -> None:
    h, path = hook(tmp_path, "command:2")
    h.phase("command")  # a phase never matches a command target
    h.command_done("iscsiadm")
    with pytest.raises(Died):
        h.command_done("iscsiadm")
    path.write_text("command:1")
    with pytest.raises(Died):
        h.command_done("multipathd")
    path.write_text("")
    for _ in range(5):
        h.command_done("iscsiadm")


def test_the_wrappers_count_failed_commands_too(tmp_path: Path) -> None:
    h, _ = hook(tmp_path, "command:2")
    executor = FakeExecutor()
    executor.expect(["iscsiadm", "-m", "session"], returncode=20)
    run = CrashingExecutor(executor, h)
    mpd = CrashingMultipathd(StatusMultipathd(), h)
    with pytest.raises(CommandFailed):
        asyncio.run(run.run(["iscsiadm", "-m", "session"], timeout=5))
    with pytest.raises(Died):
        asyncio.run(mpd.command("show status", timeout=5))
