"""hostagent-cli against a real server on a temporary Unix socket (the service on the
fake host), including a client running as an unprivileged uid."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from hostagent.api.app import make_app
from hostagent.api.peer import PeerCheck
from hostagent.cli import main as cli
from hostagent.connection_info import parse
from hostagent.exitcodes import ExitCode
from hostagent.host.fs import HostFS
from hostagent.host.proc import supplementary_groups
from hostagent.models import FcVolume
from tests.unit.iscsihost import IQN, P1, P2, SECRET, WWID, Agent, info
from tests.unprivileged import NOBODY, cli_as_nobody


class Server:
    """The API on a Unix socket, served by its own loop in a thread (the CLI runs
    asyncio.run in the test's thread)."""

    def __init__(self, agent: Agent, directory: Path, peer_check: PeerCheck | None) -> None:
        self.socket = str(directory / "hostagent.sock")
        self.app = make_app(agent.service, peer_check=peer_check,
                            preflight=agent.node.preflight)
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(self.app)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        await self.runner.setup()
        await web.UnixSite(self.runner, self.socket).start()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


GROUPS = functools.partial(supplementary_groups, HostFS("/"))

@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    a = Agent(tmp_path)
    a.host.kernel.luns[(IQN, 0)] = WWID
    return a


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # World-traversable (tmp_path is not), so the unprivileged client can reach it.
    path = Path(tempfile.mkdtemp(prefix="hostagent-cli-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def server(agent: Agent, sockdir: Path) -> Iterator[Server]:
    with Server(agent, sockdir, PeerCheck(GROUPS, frozenset(), frozenset())) as s:
        yield s


def run_cli(server: Server, *args: str) -> int:
    return cli.main(["--socket", server.socket, *args])


def test_wait_blocks_until_nothing_is_restoring(agent: Agent, server: Server, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    agent.expect_attach()
    assert run_cli(server, "attach", "--connection-info", write_info(tmp_path),
                   "--id", "a1") == ExitCode.OK
    agent.store.update("a1", phase="restoring")  # as reconcile leaves it after a reboot
    capsys.readouterr()
    assert run_cli(server, "wait", "--timeout", "0.3") == ExitCode.TIMEOUT
    assert "still restoring after 0.3 s: a1" in capsys.readouterr().err
    agent.store.update("a1", phase=None)
    assert run_cli(server, "wait") == ExitCode.OK
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["a1", "attached"]


def test_wait_waits_for_an_agent_not_serving_yet(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    absent = str(tmp_path / "not-yet.sock")
    start = time.monotonic()
    assert cli.main(["--socket", absent, "wait", "--timeout", "0.5"]) == ExitCode.UNAVAILABLE
    assert time.monotonic() - start >= 0.5  # it kept trying until its timeout


def write_info(tmp_path: Path, **kw: object) -> str:
    path = tmp_path / "ci.json"
    path.write_text(json.dumps(info(**kw)))  # type: ignore[arg-type]
    return str(path)


def test_attach_list_show_detach(agent: Agent, server: Server, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    agent.expect_attach()
    assert run_cli(server, "attach", "--connection-info", write_info(tmp_path),
                   "--id", "a1") == ExitCode.OK
    out = capsys.readouterr().out
    assert out.startswith(f"attached a1: attached /dev/disk/by-id/dm-uuid-mpath-{WWID} "
                          "(/dev/dm-0)") and "2 path(s)" in out
    assert run_cli(server, "list") == ExitCode.OK
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["ID", "STATUS", "DEVICE", "WWN", "PATHS", "VOLUME"]
    assert table[1].split() == ["a1", "attached", "/dev/dm-0", WWID, "2", "vol-1"]
    assert run_cli(server, "show", "a1", "--json") == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["device"]["path"] == "/dev/dm-0"
    agent.expect_release()
    assert run_cli(server, "detach", "a1") == ExitCode.OK
    assert capsys.readouterr().out.startswith("a1: detached")
    agent.host.executor.assert_done()


def test_a_retried_attach_says_so(agent: Agent, server: Server, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    agent.expect_attach()
    path = write_info(tmp_path)
    assert run_cli(server, "attach", "--connection-info", path, "--id", "a1") == 0
    assert run_cli(server, "attach", "--connection-info", path, "--id", "a1") == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("already attached a1")


def test_quick_iscsi_flags_with_a_secret_from_a_file(
        agent: Agent, server: Server, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    agent.expect_attach()
    assert run_cli(server, "attach", "--portal", P1, "--portal", P2, "--iqn", IQN, "--lun", "0",
                   "--chap-user", "alice", "--chap-secret-file", str(secret),
                   "--id", "a1") == ExitCode.OK
    record = agent.host.record(IQN, P1).read_text()
    assert f"node.session.auth.password = {SECRET}" in record
    assert all(SECRET not in " ".join(c.argv) for c in agent.host.executor.calls)


def test_a_secret_is_never_taken_from_argv(agent: Agent, server: Server,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    assert run_cli(server, "attach", "--portal", P1, "--iqn", IQN, "--lun", "0",
                   "--chap-user", "alice") == ExitCode.INVALID
    assert "never taken from the command line" in capsys.readouterr().err
    assert agent.host.executor.calls == []


def test_errors_name_the_field_and_map_to_exit_statuses(
        agent: Agent, server: Server, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(server, "attach", "--connection-info", write_info(tmp_path, lun=-1)) \
        == ExitCode.INVALID
    err = capsys.readouterr().err
    assert "field: connection_info.data.target_luns[0]" in err
    assert run_cli(server, "show", "nope") == ExitCode.NOT_FOUND
    assert run_cli(server, "detach", "nope", "--json") == ExitCode.NOT_FOUND
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "not_found"
    assert agent.host.executor.calls == []


def test_progress_is_shown_while_an_attach_waits(
        agent: Agent, server: Server, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    for p in (P1, P2):
        agent.host.expect_new_node(IQN, p)
        agent.host.executor.expect(
            ["iscsiadm", "-m", "node", "-T", IQN, "-p", p, "-I", "hostagent", "--login"],
            delay=4 * cli.POLL_INTERVAL,
            side_effect=lambda p=p: agent.host.kernel.add_session(IQN, p))  # type: ignore[misc]
    assert run_cli(server, "attach", "--connection-info", write_info(tmp_path)) == 0
    err = capsys.readouterr().err
    assert "logging in" in err


def test_no_daemon_gives_a_clear_message(sockdir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--socket", str(sockdir / "none.sock"), "list"]) == ExitCode.UNAVAILABLE
    assert "the agent is not running" in capsys.readouterr().err


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 65534 needs root")


@needs_root
def test_an_unprivileged_client_cannot_open_the_socket(server: Server) -> None:
    os.chmod(server.socket, 0o660)
    status, _, err = cli_as_nobody(server.socket, "list")
    assert status == ExitCode.FORBIDDEN, err
    assert "not allowed to use the agent's socket" in err


@needs_root
def test_an_unprivileged_peer_is_refused_by_its_credentials(agent: Agent,
                                                            server: Server) -> None:
    os.chmod(server.socket, 0o666)  # as a misconfigured mode would: SO_PEERCRED still stops it
    status, _, err = cli_as_nobody(server.socket, "attach", "--portal", P1, "--iqn", IQN,
                                   "--lun", "0")
    assert status == ExitCode.FORBIDDEN, err
    assert f"uid {NOBODY} is not allowed" in err
    assert agent.host.executor.calls == []


@needs_root
def test_an_allowed_group_is_served(agent: Agent, sockdir: Path) -> None:
    check = PeerCheck(GROUPS, frozenset(), frozenset({NOBODY}))
    with Server(agent, sockdir, check) as server:
        os.chmod(server.socket, 0o666)
        status, out, err = cli_as_nobody(server.socket, "list", "--json")
    assert status == ExitCode.OK, err
    assert json.loads(out) == {"attachments": []}


# ---- attach flags: Fibre Channel, read-only ----------------------------------------

WWPN1, WWPN2 = "50:01:43:80:12:34:56:78", "0x5001438012345679"


def flags_info(*argv: str) -> dict[str, object]:
    return cli.connection_info(cli.parser().parse_args(["attach", *argv]))


def test_fc_flags_give_fibre_channel_connection_info() -> None:
    info = flags_info("--wwpn", WWPN1, "--wwpn", WWPN2, "--lun", "3")
    assert info == {"driver_volume_type": "fibre_channel",
                    "data": {"target_wwn": [WWPN1, WWPN2], "target_lun": 3}}
    spec = parse(info)
    assert spec == FcVolume(("5001438012345678", "5001438012345679"), 3)


@pytest.mark.parametrize(("argv", "says"), [
    (["--wwpn", WWPN1], "--wwpn needs --lun"),
    (["--wwpn", WWPN1, "--lun", "1", "--portal", P1], "does not go with"),
    (["--wwpn", WWPN1, "--lun", "1", "--iqn", IQN], "does not go with"),
    (["--lun", "1"], "--wwpn and --lun (Fibre Channel)"),
])
def test_fc_flag_mistakes_are_refused(argv: list[str], says: str) -> None:
    with pytest.raises(cli.ClientError) as err:
        flags_info(*argv)
    assert says in str(err.value) and err.value.exit_code == ExitCode.INVALID


def test_read_only_flag_asks_access_mode_ro() -> None:
    info = flags_info("--portal", P1, "--iqn", IQN, "--lun", "0", "--read-only")
    assert parse(info).access.read_only
    assert parse(flags_info("--wwpn", WWPN1, "--lun", "0", "--read-only")).access.read_only


def test_the_cli_says_read_only_encrypted_and_discovered() -> None:
    text = cli._describe({"id": "a1", "status": "attached", "device": {
        "path": "/dev/dm-0", "stable_path": None, "wwn": "36001405ab", "paths": [{}, {}],
        "read_only": True, "encrypted": True, "discovered_from": P1, "missing": []}})
    assert text.splitlines()[1:] == [
        "  read-only",
        "  encrypted: the device holds ciphertext, open it with the volume's key",
        f"  portals found by SendTargets on {P1}"]
