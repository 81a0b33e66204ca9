"""AsyncExecutor against real programs on this host, and FakeExecutor itself."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hostagent.errors import CommandFailed, CommandNotFound, CommandTimeout
from hostagent.host.executor import AsyncExecutor, CommandResult, Executor, redact
from tests.unit.fakes import FakeExecutor

T = TypeVar("T")
SECRET = "hunter2-chap-secret"


def run(coro: Coroutine[Any, Any, T]) -> T:
    # No pytest-asyncio here: each test drives its own loop.
    return asyncio.run(coro)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie awaiting its (new) parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_dead(pid: int, within: float = 3.0) -> bool:
    # An orphaned grandchild is reaped by init, not by us: give it a moment.
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- AsyncExecutor ------------------------------------------------------------


def test_true_succeeds() -> None:
    ex = AsyncExecutor()
    result = run(ex.run(["true"], timeout=5))
    assert result.argv == ("true",)
    assert result.returncode == 0
    assert (result.stdout, result.stderr) == ("", "")
    assert result.duration >= 0


def test_false_raises_command_failed() -> None:
    with pytest.raises(CommandFailed) as err:
        run(AsyncExecutor().run(["false"], timeout=5))
    assert err.value.returncode == 1
    assert err.value.argv == ["false"]
    assert err.value.code == "host_command_failed"


def test_stdout_stderr_and_returncode_are_captured() -> None:
    argv = ["sh", "-c", "echo out; echo err >&2; exit 3"]
    with pytest.raises(CommandFailed) as err:
        run(AsyncExecutor().run(argv, timeout=5))
    assert err.value.returncode == 3
    assert err.value.stderr == "err\n"
    assert err.value.argv == argv
    assert "exited with 3: err" in str(err.value)

    result = run(AsyncExecutor().run(argv, ok_codes=(0, 3), timeout=5))
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_ok_codes_can_exclude_zero() -> None:
    # e.g. a probe where "not there" (1) is the expected answer.
    assert run(AsyncExecutor().run(["false"], ok_codes={1}, timeout=5)).returncode == 1
    with pytest.raises(CommandFailed):
        run(AsyncExecutor().run(["true"], ok_codes={1}, timeout=5))


def test_argv_is_not_parsed_by_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = run(AsyncExecutor().run(["echo", f"x; touch {marker}", "$HOME"], timeout=5))
    assert result.stdout == f"x; touch {marker} $HOME\n"
    assert not marker.exists()


def test_timeout_kills_the_process_group_and_raises(tmp_path: Path) -> None:
    # sh forks sleep (no exec), so the command has a grandchild holding its
    # pipes: killing only sh would leave us waiting for the grandchild.
    script = f'echo $$ > {tmp_path}/sh.pid; sleep 5 & echo $! > {tmp_path}/sleep.pid; wait'
    ex = AsyncExecutor()
    start = time.monotonic()
    with pytest.raises(CommandTimeout) as err:
        run(ex.run(["sh", "-c", script], timeout=0.2))
    elapsed = time.monotonic() - start
    assert elapsed < 4, "the command ran to completion instead of being killed"
    assert err.value.retryable
    assert "did not finish within 0.2 s" in str(err.value)
    sh_pid = int((tmp_path / "sh.pid").read_text())
    sleep_pid = int((tmp_path / "sleep.pid").read_text())
    assert not alive(sh_pid), "the command itself was not killed and reaped"
    assert wait_dead(sleep_pid), "the command's child survived the timeout"
    assert ex.counts[("sh", "timeout")] == 1


def test_cancelling_the_caller_kills_the_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    async def scenario() -> int:
        ex = AsyncExecutor()
        task = asyncio.create_task(
            ex.run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 5"], timeout=30))
        while not pid_file.exists() or not pid_file.read_text().strip():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return int(pid_file.read_text())

    assert not alive(run(scenario()))


def test_nonexistent_program_raises_command_not_found() -> None:
    ex = AsyncExecutor()
    with pytest.raises(CommandNotFound) as err:
        run(ex.run(["hostagent-no-such-program", "x"], timeout=5))
    assert err.value.details == {"program": "hostagent-no-such-program"}
    assert ex.counts[("hostagent-no-such-program", "not_found")] == 1


def test_secrets_are_redacted_in_result(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hostagent.host")
    result = run(AsyncExecutor().run(
        ["echo", f"--password={SECRET}"], timeout=5, secrets=[SECRET, ""]))
    assert result.argv == ("echo", "--password=***")
    assert result.stdout == "--password=***\n"
    assert SECRET not in caplog.text
    assert "--password=***" in caplog.text


def test_secrets_are_redacted_in_errors_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hostagent.host")
    argv = ["sh", "-c", 'echo "login failed for secret $1" >&2; exit 24', "sh", SECRET]
    with pytest.raises(CommandFailed) as failed:
        run(AsyncExecutor().run(argv, timeout=5, secrets={SECRET}))
    err = failed.value
    assert err.argv[-1] == "***"
    assert err.stderr == "login failed for secret ***\n"
    for text in (str(err), repr(err.argv), err.stderr, repr(err.to_dict()), caplog.text):
        assert SECRET not in text
    assert "returncode 24" in caplog.text

    with pytest.raises(CommandTimeout) as timed_out:
        run(AsyncExecutor().run(["sh", "-c", "sleep 5", SECRET], timeout=0.1, secrets=[SECRET]))
    assert timed_out.value.argv == ["sh", "-c", "sleep 5", "***"]
    assert SECRET not in repr(timed_out.value.to_dict())
    assert SECRET not in caplog.text


def test_every_command_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hostagent.host")
    run(AsyncExecutor().run(["true"], timeout=5))
    [record] = [r for r in caplog.records if r.name == "hostagent.host"]
    assert record.levelno == logging.DEBUG
    assert "ran true: ok, returncode 0" in record.getMessage()


def test_counts_by_program_and_outcome() -> None:
    ex = AsyncExecutor()

    async def scenario() -> None:
        await ex.run(["true"], timeout=5)
        await ex.run(["/bin/true"], timeout=5)
        with pytest.raises(CommandFailed):
            await ex.run(["false"], timeout=5)
        await ex.run(["false"], ok_codes=(1,), timeout=5)
        with pytest.raises(CommandTimeout):
            await ex.run(["sleep", "5"], timeout=0.1)
        with pytest.raises(CommandNotFound):
            await ex.run(["hostagent-no-such-program"], timeout=5)

    run(scenario())
    assert ex.counts == {
        ("true", "ok"): 2,
        ("false", "failed"): 1,
        ("false", "ok"): 1,
        ("sleep", "timeout"): 1,
        ("hostagent-no-such-program", "not_found"): 1,
    }
    assert ex.calls == 6


def test_input_goes_to_stdin() -> None:
    result = run(AsyncExecutor().run(["cat"], input="node.session.auth = x\n", timeout=5))
    assert result.stdout == "node.session.auth = x\n"


def test_stdin_is_devnull_without_input() -> None:
    # A tool that prompts must see EOF, not wait for the timeout.
    assert run(AsyncExecutor().run(["cat"], timeout=5)).stdout == ""


def test_child_env_is_inherited_with_c_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    monkeypatch.setenv("HOSTAGENT_TEST_INHERITED", "yes")
    result = run(AsyncExecutor().run(["env"], timeout=5))
    env = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert env["LC_ALL"] == "C"
    assert env["HOSTAGENT_TEST_INHERITED"] == "yes"
    assert os.environ["LC_ALL"] == "de_DE.UTF-8", "the agent's own env was changed"


def _marker_cmd(log: Path, name: str, wait_for_peer: bool) -> list[str]:
    # Each child appends start/end markers; the order in the file shows
    # whether the two ran at the same time, with no wall-clock assertion.
    # wait_for_peer makes a child end only after the other one has started,
    # which can only happen if they overlap.
    middle = (f'until [ "$(grep -c start {log})" -ge 2 ]; do sleep 0.01; done'
              if wait_for_peer else "sleep 0.3")
    return ["sh", "-c", f"echo start {name} >> {log}; {middle}; echo end {name} >> {log}"]


def test_max_parallel_1_serialises(tmp_path: Path) -> None:
    log = tmp_path / "markers"
    ex = AsyncExecutor(max_parallel=1)

    async def scenario() -> None:
        await asyncio.gather(
            ex.run(_marker_cmd(log, "a", False), timeout=10),
            ex.run(_marker_cmd(log, "b", False), timeout=10),
        )

    run(scenario())
    markers = [line.split() for line in log.read_text().splitlines()]
    first, second = markers[0][1], markers[2][1]
    assert {first, second} == {"a", "b"}
    assert markers == [["start", first], ["end", first], ["start", second], ["end", second]]


def test_max_parallel_2_runs_concurrently(tmp_path: Path) -> None:
    # The control for the test above: the same markers do show overlap.
    log = tmp_path / "markers"
    ex = AsyncExecutor(max_parallel=2)

    async def scenario() -> None:
        await asyncio.gather(
            ex.run(_marker_cmd(log, "a", True), timeout=10),
            ex.run(_marker_cmd(log, "b", True), timeout=10),
        )

    run(scenario())
    assert [line.split()[0] for line in log.read_text().splitlines()] == [
        "start", "start", "end", "end"]


def test_executor_outlives_event_loops(tmp_path: Path) -> None:
    # Built outside any loop and used (with contention on the limit) under
    # two successive loops, as the CLI and tests do.
    ex = AsyncExecutor(max_parallel=1)

    async def scenario() -> None:
        await asyncio.gather(*(ex.run(["true"], timeout=5) for _ in range(3)))

    run(scenario())
    run(scenario())
    assert ex.counts[("true", "ok")] == 6


def test_call_mistakes_are_rejected() -> None:
    ex = AsyncExecutor()
    with pytest.raises(TypeError):
        run(ex.run("true", timeout=5))
    with pytest.raises(ValueError):
        run(ex.run([], timeout=5))
    with pytest.raises(ValueError):
        run(ex.run(["true"], timeout=0))
    with pytest.raises(TypeError):
        run(ex.run(["true"], timeout=5, secrets=SECRET))
    with pytest.raises(ValueError):
        AsyncExecutor(max_parallel=0)
    assert ex.calls == 0


def test_redact() -> None:
    assert redact("user=a pass=abcdef", ["abc", "abcdef", ""]) == "user=a pass=***"
    assert redact("nothing here", []) == "nothing here"
    with pytest.raises(TypeError):
        redact("abc", "b")


# --- FakeExecutor -------------------------------------------------------------


def test_fake_is_an_executor() -> None:
    executors: list[Executor] = [AsyncExecutor(), FakeExecutor()]
    assert len(executors) == 2


def test_fake_replays_scripted_reply() -> None:
    fake = FakeExecutor()
    fake.expect(["iscsiadm", "-m", "session"], stdout="tcp: [1] ...\n", stderr="warn\n")
    result = run(fake.run(["iscsiadm", "-m", "session"], timeout=5))
    assert result == CommandResult(
        ("iscsiadm", "-m", "session"), 0, "tcp: [1] ...\n", "warn\n", 0.0)
    assert fake.commands() == [("iscsiadm", "-m", "session")]
    fake.assert_done()


def test_fake_unexpected_command_raises_and_fails_assert_done() -> None:
    fake = FakeExecutor()
    fake.expect(["iscsiadm", "-m", "node"])
    unexpected = r"unexpected command: \('iscsiadm', '-m', 'session'\)"
    with pytest.raises(AssertionError, match=unexpected):
        run(fake.run(["iscsiadm", "-m", "session"], timeout=5))
    # Even if the code under test swallowed the error, the test still fails.
    run(fake.run(["iscsiadm", "-m", "node"], timeout=5))
    with pytest.raises(AssertionError, match="unexpected: "):
        fake.assert_done()


def test_fake_exact_match_is_default() -> None:
    fake = FakeExecutor()
    fake.expect(["multipath", "-f"])
    with pytest.raises(AssertionError, match="unexpected command"):
        run(fake.run(["multipath", "-f", "mpatha"], timeout=5))


def test_fake_fifo_among_matches() -> None:
    fake = FakeExecutor()
    fake.expect(["iscsiadm", "-m", "session"], returncode=21, stderr="no sessions")
    fake.expect(["multipath", "-ll"], stdout="maps")
    fake.expect(["iscsiadm", "-m", "session"], stdout="tcp: [1]")

    async def scenario() -> list[str]:
        with pytest.raises(CommandFailed):
            await fake.run(["iscsiadm", "-m", "session"], timeout=5)
        second = await fake.run(["iscsiadm", "-m", "session"], timeout=5)
        third = await fake.run(["multipath", "-ll"], timeout=5)
        return [second.stdout, third.stdout]

    assert run(scenario()) == ["tcp: [1]", "maps"]
    fake.assert_done()


def test_fake_prefix_match_and_times() -> None:
    fake = FakeExecutor()
    fake.expect(["iscsiadm", "-m", "node", "-T"], exact=False, times=2)
    run(fake.run(["iscsiadm", "-m", "node", "-T", "iqn.a", "--login"], timeout=5))
    run(fake.run(["iscsiadm", "-m", "node", "-T", "iqn.b", "--login"], timeout=5))
    with pytest.raises(AssertionError, match="unexpected command"):
        run(fake.run(["iscsiadm", "-m", "node", "-T", "iqn.c", "--login"], timeout=5))


def test_fake_assert_done_reports_leftovers() -> None:
    fake = FakeExecutor()
    fake.expect(["iscsiadm", "-m", "session"])
    fake.expect(["multipath", "-r"], times=2)
    run(fake.run(["multipath", "-r"], timeout=5))
    with pytest.raises(AssertionError) as err:
        fake.assert_done()
    assert "('iscsiadm', '-m', 'session')" in str(err.value)
    assert "('multipath', '-r') (exact, 1 left)" in str(err.value)


def test_fake_bad_returncode_raises_command_failed_with_redaction() -> None:
    fake = FakeExecutor()
    fake.expect(["iscsiadm", "-m", "node", "-o", "update"], exact=False, returncode=15,
                stderr=f"cannot set {SECRET}")
    argv = ["iscsiadm", "-m", "node", "-o", "update", "-v", SECRET]
    with pytest.raises(CommandFailed) as err:
        run(fake.run(argv, timeout=5, secrets=[SECRET]))
    assert err.value.returncode == 15
    assert err.value.argv[-1] == "***"
    assert SECRET not in str(err.value)
    assert SECRET not in err.value.stderr
    # Raw argv is recorded, so tests can check where a secret did go.
    assert fake.calls[0].argv == tuple(argv)
    assert fake.calls[0].secrets == (SECRET,)


def test_fake_honours_ok_codes() -> None:
    fake = FakeExecutor()
    fake.expect(["iscsiadm", "-m", "session"], returncode=21)
    result = run(fake.run(["iscsiadm", "-m", "session"], ok_codes=(0, 21), timeout=5))
    assert result.returncode == 21


def test_fake_timeout() -> None:
    fake = FakeExecutor()
    fake.expect(["iscsiadm", "-m", "discovery"], exact=False, timeout=True)
    fake.expect(["multipathd", "show", "maps"], delay=10)  # longer than the call allows
    with pytest.raises(CommandTimeout, match="did not finish within 15 s"):
        run(fake.run(["iscsiadm", "-m", "discovery", "-p", "10.0.0.1"], timeout=15))
    with pytest.raises(CommandTimeout):
        run(fake.run(["multipathd", "show", "maps"], timeout=0.05))
    fake.assert_done()


def test_fake_side_effect_and_call_record() -> None:
    fake = FakeExecutor()
    seen: list[str] = []
    fake.expect(["udevadm", "settle"], side_effect=lambda: seen.append("settled"))
    run(fake.run(["udevadm", "settle"], timeout=30, input="x"))
    assert seen == ["settled"]
    call = fake.calls[0]
    assert (call.input, call.timeout, call.ok_codes) == ("x", 30, (0,))


def test_a_long_stderr_keeps_its_last_whole_lines() -> None:
    lines = [f"iscsiadm: cannot make connection to 192.0.2.1: Network is unreachable ({i})"
             for i in range(20)]
    err = CommandFailed(["iscsiadm", "-m", "discovery"], 4, "\n".join(lines) + "\n")
    message = err.message
    assert message.startswith("iscsiadm exited with 4: ... iscsiadm: cannot make")
    assert message.endswith("(19)") and len(message) < 540
    short = CommandFailed(["multipath"], 1, "one line\n")
    assert short.message == "multipath exited with 1: one line"
