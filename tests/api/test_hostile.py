"""The hostile-input corpus (tests/api/hostile.py) against the API and hostagent-cli.

API: every case answers 400 invalid_request in the error shape, `details.field`
naming the field, a message with no raw control character, and nothing ran on
the host (neither executor has a call, no attachment row was written, the node
was not probed). CLI: the same cases through `hostagent-cli attach
--connection-info FILE`, `--id`, `--volume-id`, `--timeout`, the quick flags,
`show|detach|extend ID` and `preflight --portal`: exit status INVALID (USAGE
where argparse itself refuses the value), the field named on stderr, nothing on
stdout, nothing ran.

One agent serves a whole module (the corpus is large); each case checks on its own
that nothing ran, so the first case that got through is the one that fails.

What the corpus found (fixed): an id holding '{' or '}' answered 404 "no route"
(aiohttp's default segment pattern), `?force` / `?fc=` were taken for false and a
repeated flag for its first value; hostagent-cli put ids into the URL unquoted
(`detach 'a1?force=true'` was a forced detach of a1, an id with a space "the agent
closed the connection"), read a connection_info file with duplicated keys by
keeping the last, crashed on a file nested 100000 deep or not UTF-8, and dropped
`--timeout 0`.
"""

from __future__ import annotations

import http.client
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostagent.agent.service import Service
from hostagent.api.app import attach_request, make_app
from hostagent.cli import main as cli
from hostagent.connection_info import FIBRE_CHANNEL, ISCSI
from hostagent.exitcodes import ExitCode
from hostagent.node.tools import Host as LocalHost
from tests.api import hostile
from tests.api.hostile import CASES, PREFLIGHT_PORTALS, QUERIES, Case, Query
from tests.api.test_cli import Server
from tests.api.test_fuzz import TcpServer
from tests.unit import fchost
from tests.unit.iscsihost import WWID, Agent

ERROR_KEYS = {"code", "message", "details"}


class Corpus:
    """An agent with both engines, served over TCP (the API tests) and on a Unix
    socket (the CLI tests)."""

    def __init__(self, root: Path) -> None:
        self.agent = Agent(root / "agent")
        self.agent.host.kernel.luns[(hostile.IQN, 0)] = WWID
        self.fc = fchost.Host(root / "fc")
        self.agent.service = Service(self.agent.store, {ISCSI: self.agent.host.connector,
                                                        FIBRE_CHANNEL: self.fc.connector})
        self.root = root

    def reset(self) -> None:
        """After a case that got through: so the next case is judged on its own."""
        for executor in (self.agent.host.executor, self.fc.executor, self.agent.node.executor):
            executor.calls.clear()
            executor.unexpected.clear()
        self.fc.fs.writes.clear()
        self.agent.node.net.connects.clear()
        for att in self.agent.store.list(include_detached=True):
            self.agent.store.delete(att.id)

    def nothing_ran(self) -> None:
        a = self.agent
        assert a.host.executor.calls == [], a.host.executor.calls
        assert self.fc.executor.calls == [] and self.fc.scans() == []
        assert a.node.executor.calls == [] and a.node.net.connects == []
        assert a.store.list() == []


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(autouse=True)
def fresh(corpus: Corpus) -> Iterator[None]:
    yield
    corpus.reset()


@pytest.fixture(scope="module")
def api(corpus: Corpus) -> Iterator[TcpServer]:
    app = make_app(corpus.agent.service, peer_check=None, preflight=corpus.agent.node.preflight)
    with TcpServer(app) as server:
        yield server


def send(server: TcpServer, method: str, path: str, data: bytes | None = None
         ) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def refused(answer: tuple[int, Any], field: str) -> None:
    status, doc = answer
    assert status == 400, doc
    assert set(doc) == {"error"} and set(doc["error"]) == ERROR_KEYS, doc
    assert doc["error"]["code"] == "invalid_request", doc
    assert doc["error"]["details"].get("field") == field, doc
    message = doc["error"]["message"]
    # A terminal printing it shows no hostile control character (values are repr()'d).
    if "\n" not in field:
        assert message.isprintable(), message


# ---- the API -------------------------------------------------------------------------------

def test_the_requests_the_values_go_into_are_valid(corpus: Corpus) -> None:
    """So each case's 400 is for its hostile value, not for its carrier."""
    for name, shape in hostile.SHAPES.items():
        req = attach_request(hostile.body(shape()), corpus.agent.service)
        assert req.attachment_id == "a1", name
    corpus.nothing_ran()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_attach_is_refused_naming_the_field(corpus: Corpus, api: TcpServer,
                                                    case: Case) -> None:
    refused(send(api, "POST", "/v1/attachments", case.request()["data"]), case.field)
    corpus.nothing_ran()


@pytest.mark.parametrize("query", QUERIES, ids=[q.name for q in QUERIES])
def test_hostile_ids_and_queries_are_refused_naming_the_field(corpus: Corpus, api: TcpServer,
                                                              query: Query) -> None:
    refused(send(api, query.method, query.path), query.field)
    corpus.nothing_ran()


def test_chap_secrets_are_never_quoted(corpus: Corpus, api: TcpServer) -> None:
    for case in CASES:
        if case.field.endswith("auth_password") and isinstance(case.body, dict):
            secret = case.body["connection_info"]["data"]["auth_password"]
            _, doc = send(api, "POST", "/v1/attachments", case.request()["data"])
            if isinstance(secret, str) and len(secret) > 3:
                assert secret not in json.dumps(doc) and repr(secret)[1:-1] not in str(doc)


# ---- hostagent-cli ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def socket_server(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Server]:
    with Server(corpus.agent, tmp_path_factory.mktemp("sock"), None) as server:
        yield server


@pytest.fixture(scope="module")
def good_info(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("info") / "good.json"
    path.write_text(json.dumps(hostile.datera()))
    return str(path)


def run_cli(server: Server, capsys: pytest.CaptureFixture[str], *args: str
            ) -> tuple[int, str, str]:
    status = cli.main(["--socket", server.socket, *args])
    out, err = capsys.readouterr()
    return status, out, err


def assert_cli_refused(result: tuple[int, str, str], field: str,
                       status: ExitCode = ExitCode.INVALID) -> None:
    code, out, err = result
    assert code == status, err
    assert out == ""
    assert err.startswith("hostagent-cli: "), err
    if status == ExitCode.INVALID:
        assert f"\n  field: {field}\n" in err, err
    # Nothing hostile reaches the terminal raw: every line is printable.
    assert all(line.isprintable() for line in err.splitlines()), err


CLI_INFO = [c for c in CASES if c.cli == "info"]


@pytest.mark.parametrize("case", CLI_INFO, ids=[c.name for c in CLI_INFO])
def test_cli_connection_info_file(corpus: Corpus, socket_server: Server, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str], case: Case) -> None:
    path = tmp_path / "ci.json"
    path.write_bytes(case.file())
    assert_cli_refused(run_cli(socket_server, capsys, "attach", "--id", "a1",
                               "--connection-info", str(path)), case.cli_field or case.field)
    corpus.nothing_ran()


# argv holds strings: an id that is not a string, or empty (the CLI then sends none),
# has no command-line form; a timeout is a number argparse has read.
CLI_FLAGS = [c for c in CASES if (c.cli in ("id", "volume_id") and isinstance(c.value(), str)
                                  and c.value() != "") or c.cli == "timeout"]


def _flag_args(case: Case) -> list[str]:
    value = case.value()
    flag = {"id": "--id", "volume_id": "--volume-id", "timeout": "--timeout"}[case.cli or ""]
    # --flag=value: a value starting with "-" is not taken for an option
    return [f"{flag}={value if isinstance(value, str) else repr(float(value))}"]


@pytest.mark.parametrize("case", CLI_FLAGS, ids=[c.name for c in CLI_FLAGS])
def test_cli_flags(corpus: Corpus, socket_server: Server, good_info: str,
                   capsys: pytest.CaptureFixture[str], case: Case) -> None:
    args = ["attach", "--connection-info", good_info, *_flag_args(case)]
    if case.cli != "id":
        args += ["--id", "a1"]
    assert_cli_refused(run_cli(socket_server, capsys, *args), case.field)
    corpus.nothing_ran()


ID_COMMANDS = [(cmd, name, value) for cmd in ("show", "detach", "extend")
               for name, value in hostile.BAD_IDS]


@pytest.mark.parametrize(("command", "value"), [(c, v) for c, _, v in ID_COMMANDS],
                         ids=[f"{c}: {n}" for c, n, _ in ID_COMMANDS])
def test_cli_attachment_ids(corpus: Corpus, socket_server: Server,
                            capsys: pytest.CaptureFixture[str], command: str,
                            value: str) -> None:
    # after "--", a value starting with "-" is not taken for an option
    args = [command, "--", value] if value.startswith("-") else [command, value]
    assert_cli_refused(run_cli(socket_server, capsys, *args), "attachment_id")
    corpus.nothing_ran()


def test_a_query_in_an_id_is_not_a_query(corpus: Corpus, socket_server: Server,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`detach 'a1?force=true'` used to send DELETE /v1/attachments/a1?force=true."""
    corpus.agent.expect_attach()
    status, _, err = run_cli(socket_server, capsys, "attach", "--id", "a1",
                             "--connection-info", _write(corpus.root, hostile.datera()))
    try:
        assert status == ExitCode.OK, err
        calls = len(corpus.agent.host.executor.calls)
        assert_cli_refused(run_cli(socket_server, capsys, "detach", "a1?force=true"),
                           "attachment_id")
        assert len(corpus.agent.host.executor.calls) == calls
        assert corpus.agent.store.get("a1").status == "attached"  # type: ignore[union-attr]
    finally:
        corpus.agent.expect_release()
        assert run_cli(socket_server, capsys, "detach", "a1")[0] == ExitCode.OK
        corpus.agent.host.executor.assert_done()


def _write(root: Path, info: dict[str, Any]) -> str:
    path = root / "ok.json"
    path.write_text(json.dumps(info))
    return str(path)


# An empty --portal or --iqn is "give all of --portal, --iqn and --lun" (INVALID).
PORTAL_FLAGS = [(n, v) for n, v in PREFLIGHT_PORTALS if v]
IQN_FLAGS = [(n, v) for n, v in hostile._values(hostile.TEXT_FIELDS[1])
             if isinstance(v, str) and v]
LUN_FLAGS = [(n, v) for n, v in hostile.OUT_OF_RANGE_LUNS if type(v) is int]


@pytest.mark.parametrize(("flag", "value", "field"), [
    *[("--portal", v, "connection_info.data.target_portals[0]") for _, v in PORTAL_FLAGS],
    *[("--iqn", v, "connection_info.data.target_iqns[0]") for _, v in IQN_FLAGS],
    *[("--lun", str(v), "connection_info.data.target_luns[0]") for _, v in LUN_FLAGS],
], ids=[*[f"portal: {n}" for n, _ in PORTAL_FLAGS], *[f"iqn: {n}" for n, _ in IQN_FLAGS],
        *[f"lun: {n}" for n, _ in LUN_FLAGS]])
def test_cli_quick_iscsi_flags(corpus: Corpus, socket_server: Server,
                               capsys: pytest.CaptureFixture[str], flag: str, value: str,
                               field: str) -> None:
    args = {"--portal": hostile.P1, "--iqn": hostile.IQN, "--lun": "0"}
    args[flag] = value
    argv = ["attach", "--id", "a1", *(f"{k}={v}" for k, v in args.items())]
    assert_cli_refused(run_cli(socket_server, capsys, *argv), field)
    corpus.nothing_ran()


ARGPARSE = [
    *[(["attach", "--portal", hostile.P1, "--iqn", hostile.IQN, f"--lun={v}"], "--lun")
      for v in ("1.5", "0x1", "1;reboot", "", "NaN", "1e3", "1\n2", "\x00")],
    *[(["attach", "--connection-info", "x", f"--timeout={v}"], "--timeout")
      for v in ("ten", "", "1;reboot", "0x10", "1\x00")]]


@pytest.mark.parametrize(("args", "option"), ARGPARSE, ids=[repr(a[-1]) for a, _ in ARGPARSE])
def test_cli_values_argparse_refuses(corpus: Corpus, socket_server: Server,
                                     capsys: pytest.CaptureFixture[str], args: list[str],
                                     option: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--socket", socket_server.socket, *args])
    assert exit_.value.code == ExitCode.USAGE
    assert f"argument {option}: invalid" in capsys.readouterr().err
    corpus.nothing_ran()


@pytest.mark.parametrize("value", [v for _, v in PREFLIGHT_PORTALS],
                         ids=[n for n, _ in PREFLIGHT_PORTALS])
def test_cli_preflight_portals(corpus: Corpus, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    node = corpus.agent.node
    monkeypatch.setattr("hostagent.cli.local.real_host",
                        lambda: LocalHost(node.preflight, node.mpconf, node.udev))
    status = cli.main(["preflight", "--portal", "10.0.0.2", f"--portal={value}"])
    out, err = capsys.readouterr()
    err = "\n".join(line for line in err.splitlines() if "not root" not in line) + "\n"
    assert_cli_refused((status, out, err), "--portal[1]")
    corpus.nothing_ran()


def test_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """The corpus's size, for the record (junit and -s)."""
    api = len(CASES) + len(QUERIES)
    cli_cases = (len(CLI_INFO) + len(CLI_FLAGS) + len(ID_COMMANDS) + len(PORTAL_FLAGS)
                 + len(IQN_FLAGS) + len(LUN_FLAGS) + len(ARGPARSE) + len(PREFLIGHT_PORTALS))
    with capsys.disabled():
        print(f"\nhostile inputs: {api} through the API, {cli_cases} through hostagent-cli",
              file=sys.stderr)
    assert api > 1000 and cli_cases > 1000
