"""hostagent-cli: attach, detach, list, show, extend and connector over the agent's socket;
preflight and multipath run on the node itself (hostagent.cli.local).

Exit statuses are named in hostagent.exitcodes; `--json` prints the API's answers
(errors included) as JSON on stdout. While an attach or detach runs, its phases
are shown on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
import threading
import time
import uuid
from typing import Any, TextIO
from urllib.parse import quote

from hostagent import __version__
from hostagent.cli.client import Client, ClientError
from hostagent.config import Config
from hostagent.exitcodes import ExitCode, HealthExit
from hostagent.models import RESTORING

SOCKET_ENV = "HOSTAGENT_SOCKET"
POLL_INTERVAL = 0.25  # s between progress reads; only while a command waits
# `wait`: as long as the shipped unit waits, which covers a restore with the default
# options (config.Config.restore_deadline, with room for the undo of a try cut off).
WAIT_TIMEOUT = 2400.0


def _read_text(source: str, what: str, field: str) -> str:
    try:
        if source == "-":
            return sys.stdin.read()
        with open(source) as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else f"not UTF-8 text ({err.reason})"
        raise ClientError(f"cannot read {what} from {source}: {reason}", ExitCode.INVALID,
                          code="invalid_request", details={"field": field}) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # As the agent does: a key given twice is refused, not settled by the last one.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:64]!r}")
        result[key] = value
    return result


def _chap_secret(args: argparse.Namespace) -> str:
    if args.chap_secret_file:
        secret = _read_text(args.chap_secret_file, "the CHAP secret",
                            "--chap-secret-file").strip()
    elif sys.stdin.isatty():
        secret = getpass.getpass(f"CHAP secret for {args.chap_user}: ")
    else:
        raise ClientError("--chap-user needs --chap-secret-file (or a terminal to prompt on); "
                          "a secret is never taken from the command line", ExitCode.INVALID,
                          code="invalid_request")
    if not secret:
        raise ClientError("the CHAP secret is empty", ExitCode.INVALID, code="invalid_request")
    return secret


def connection_info(args: argparse.Namespace) -> dict[str, Any]:
    if args.connection_info:
        text = _read_text(args.connection_info, "connection_info", "connection_info")
        try:
            info = json.loads(text, object_pairs_hook=_no_duplicates)
        except (ValueError, RecursionError) as err:
            reason = "nested too deeply" if isinstance(err, RecursionError) else err
            raise ClientError(f"connection_info is not valid JSON: {reason}", ExitCode.INVALID,
                              code="invalid_request",
                              details={"field": "connection_info"}) from None
        if not isinstance(info, dict):
            raise ClientError("connection_info must be a JSON object", ExitCode.INVALID,
                              code="invalid_request", details={"field": "connection_info"})
        return info
    info = _fc_flags(args) if args.wwpn else _iscsi_flags(args)
    if args.read_only:
        info["data"]["access_mode"] = "ro"
    return info


def _invalid(message: str) -> ClientError:
    return ClientError(message, ExitCode.INVALID, code="invalid_request")


def _fc_flags(args: argparse.Namespace) -> dict[str, Any]:
    if args.portal or args.iqn or args.discover or args.chap_user:
        raise _invalid("--wwpn (Fibre Channel) does not go with --portal, --iqn, --discover "
                       "or --chap-user (iSCSI)")
    if args.lun is None:
        raise _invalid("--wwpn needs --lun")
    return {"driver_volume_type": "fibre_channel",
            "data": {"target_wwn": args.wwpn, "target_lun": args.lun}}


def _iscsi_flags(args: argparse.Namespace) -> dict[str, Any]:
    if not (args.portal and args.iqn and args.lun is not None):
        raise _invalid("give --connection-info FILE|-, all of --portal, --iqn and --lun "
                       "(iSCSI), or --wwpn and --lun (Fibre Channel)")
    n = len(args.portal)
    data: dict[str, Any] = {"target_discovered": args.discover}
    if args.discover:
        if n != 1:
            raise _invalid("--discover takes a single --portal")
        data.update(target_portal=args.portal[0], target_iqn=args.iqn, target_lun=args.lun)
    else:
        data.update(target_portals=args.portal, target_iqns=[args.iqn] * n,
                    target_luns=[args.lun] * n)
    if args.chap_user:
        data.update(auth_method="CHAP", auth_username=args.chap_user,
                    auth_password=_chap_secret(args))
    return {"driver_volume_type": "iscsi", "data": data}


# ---- output -------------------------------------------------------------------------

def _describe(att: dict[str, Any]) -> str:
    dev = att.get("device") or {}
    line = f"{att['id']}: {att['status']}"
    if att.get("phase"):
        line += f" ({att['phase']})"
    if dev:
        names = [n for n in (dev.get("stable_path"), dev.get("path")) if n]
        named = f"{names[0]} ({names[1]})" if len(names) == 2 else \
            (names[0] if names else "no device now")
        line += f" {named} wwn {dev['wwn']}, {len(dev['paths'])} path(s)"
    if att.get("last_error"):
        line += f" ({att['last_error'].get('code')}: {att['last_error'].get('message')})"
    notes = [text for key, text in (("read_only", "read-only"), ("encrypted",
             "encrypted: the device holds ciphertext, open it with the volume's key"))
             if dev.get(key)]
    if dev.get("discovered_from"):
        notes.append(f"portals found by SendTargets on {dev['discovered_from']}")
    line += "".join(f"\n  {note}" for note in notes)
    for missing in dev.get("missing", []):
        line += f"\n  missing path: {missing}"
    return line


def table(attachments: list[dict[str, Any]]) -> str:
    rows = [("ID", "STATUS", "DEVICE", "WWN", "PATHS", "VOLUME")]
    for a in attachments:
        dev = a.get("device") or {}
        paths = f"{len(dev.get('paths', []))}" + (f" (-{len(dev['missing'])})"
                                                  if dev.get("missing") else "")
        rows.append((a["id"], a["status"] + (f" [{a['phase']}]" if a.get("phase") else ""),
                     dev.get("path") or "-", dev.get("wwn", "-"), paths if dev else "-",
                     a.get("volume_id") or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def health_text(report: dict[str, Any]) -> str:
    """The health report as a table of volumes, each with its paths and reasons."""
    lines = [f"overall: {report['status']} ({len(report['attachments'])} attached volume(s); "
             f"self-heal {'on' if report['self_heal']['enabled'] else 'off'})"]
    rows = [("ID", "STATUS", "DEVICE", "PATHS", "PROBE", "VOLUME")]
    for a in report["attachments"]:
        probe = a.get("probe")
        rows.append((a["id"], a["status"], a["device"], f"{a['paths_up']}/{a['paths_expected']}",
                     "-" if probe is None else ("ok" if probe["ok"] else "FAILED"),
                     a.get("volume_id") or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    for a in report["attachments"]:
        if a["status"] == "healthy":
            continue
        lines.append(f"{a['id']}:")
        for p in a["paths"]:
            where = "".join(f" {v}" for v in (p.get("device"), p.get("hctl")) if v)
            lines.append(f"  path {p['path']}{where}: {p['state']}"
                         + (f" ({'; '.join(p['problems'])})" if p["problems"] else ""))
        lines += [f"  reason: {r}" for r in a["reasons"]]
    for action in report["self_heal"]["actions"][-5:]:
        lines.append(f"self-heal {time.strftime('%H:%M:%S', time.localtime(action['at']))} "
                     f"{action['attachment_id']}: {action['action']} {action['path']}: "
                     f"{action['outcome']} ({action['message']})")
    return "\n".join(lines)


def health_exit(report: dict[str, Any]) -> HealthExit:
    return HealthExit[str(report.get("status", "failed")).upper()]


class Progress:
    """Shows the phases of a running operation, read from GET /v1/attachments/{id}
    by a thread of its own while the main thread waits for the answer."""

    def __init__(self, client: Client, attachment_id: str, out: TextIO) -> None:
        self.client = Client(client.socket_path, timeout=10)
        self.attachment_id, self.out = attachment_id, out
        self.start = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> Progress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(15)

    def _follow(self) -> None:
        seen = None
        while not self.done.wait(POLL_INTERVAL):
            with contextlib.suppress(ClientError):
                _, att = self.client.request("GET", _path(self.attachment_id))
                phase = att.get("phase")
                if phase and phase != seen and not self.done.is_set():
                    print(f"  {time.monotonic() - self.start:6.2f}s  {phase}", file=self.out,
                          flush=True)
                    seen = phase


def _with_progress(client: Client, attachment_id: str, show: bool,
                   method: str, path: str, **kw: Any) -> tuple[int, Any]:
    if not show:
        return client.request(method, path, **kw)
    with Progress(client, attachment_id, sys.stderr):
        return client.request(method, path, **kw)


# ---- commands -----------------------------------------------------------------------

def _path(attachment_id: str, rest: str = "") -> str:
    """The attachment's URL path, its id percent-encoded: an id holding '?', '/', '#' or
    a space is refused by the agent as an id, never read as a query or another path."""
    return f"/v1/attachments/{quote(attachment_id, safe='', errors='surrogatepass')}{rest}"


def run(args: argparse.Namespace) -> tuple[Any, str]:
    """The JSON answer and its human form."""
    show = not args.json
    client = Client(args.socket)
    if args.command == "attach":
        att_id = args.id or str(uuid.uuid4())
        body: dict[str, Any] = {"attachment_id": att_id,
                                "connection_info": connection_info(args)}
        if args.volume_id:
            body["volume_id"] = args.volume_id
        options: dict[str, Any] = {}
        if args.multipath is not None:
            options["multipath"] = args.multipath
        if args.timeout is not None:
            options["timeout"] = args.timeout
        if options:
            body["options"] = options
        status, att = _with_progress(client, att_id, show, "POST", "/v1/attachments",
                                     body=body)
        verb = "attached" if status == 201 else "already attached"
        return att, f"{verb} {_describe(att)}"
    if args.command == "detach":
        _, att = _with_progress(client, args.id, show, "DELETE", _path(args.id),
                                query={"force": "true"} if args.force else None)
        return att, _describe(att)
    if args.command == "extend":
        _, att = client.request("POST", _path(args.id, "/extend"))
        return att, f"{_describe(att)}, {att['device']['size_bytes']} bytes"
    if args.command == "show":
        _, att = client.request("GET", _path(args.id))
        return att, json.dumps(att, indent=2)
    if args.command == "list":
        _, answer = client.request("GET", "/v1/attachments")
        return answer, table(answer["attachments"])
    if args.command == "wait":
        return _wait_restored(client, args.timeout)
    if args.command == "health":
        _, report = client.request("GET", "/v1/health")
        return report, health_text(report)
    _, props = client.request("GET", "/v1/connector")
    return props, "\n".join(f"{k}: {v}" for k, v in sorted(props.items()))


def _wait_restored(client: Client, timeout: float) -> tuple[Any, str]:
    """Block until no attachment is being restored. An agent still starting (no socket
    yet, or reconciling before it serves) is waited for too: systemd runs this as the
    unit's ExecStartPost right after it starts the agent."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, answer = client.request("GET", "/v1/attachments")
        except ClientError as err:
            if err.exit_code != ExitCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(POLL_INTERVAL)
            continue
        restoring = [a["id"] for a in answer["attachments"] if a.get("phase") == RESTORING]
        if not restoring:
            return answer, table(answer["attachments"])
        if time.monotonic() > deadline:
            raise ClientError(f"still restoring after {timeout:g} s: {', '.join(restoring)}",
                              ExitCode.TIMEOUT, code="timeout",
                              details={"restoring": restoring})
        time.sleep(POLL_INTERVAL)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON answer")
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help=f"the agent's socket (default ${SOCKET_ENV} or {Config.socket})")
    p = argparse.ArgumentParser(prog="hostagent-cli", parents=[common],
                                description="Attach and detach SAN volumes through hostagent.")
    p.add_argument("--version", action="version", version=f"hostagent-cli {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attach", parents=[common], help="attach a volume")
    a.add_argument("--connection-info", metavar="FILE|-",
                   help="Cinder's connection_info as JSON (- reads stdin)")
    a.add_argument("--portal", action="append", help="ip[:port]; repeat for every portal")
    a.add_argument("--iqn")
    a.add_argument("--lun", type=int)
    a.add_argument("--wwpn", action="append",
                   help="Fibre Channel: a target port's WWPN; repeat for every port "
                        "(with --lun)")
    a.add_argument("--read-only", action="store_true", help="access_mode ro")
    a.add_argument("--discover", action="store_true",
                   help="SendTargets on the one --portal finds the others")
    a.add_argument("--chap-user")
    a.add_argument("--chap-secret-file", metavar="FILE|-",
                   help="the CHAP secret (prompted for when absent and on a terminal)")
    a.add_argument("--id", help="attachment id (makes a retry safe; a new UUID by default)")
    a.add_argument("--volume-id")
    a.add_argument("--multipath", dest="multipath", action="store_true", default=None)
    a.add_argument("--no-multipath", dest="multipath", action="store_false")
    a.add_argument("--timeout", type=float, help="seconds before the attach is undone")
    d = sub.add_parser("detach", parents=[common], help="detach an attachment")
    d.add_argument("id")
    d.add_argument("--force", action="store_true",
                   help="go on past a failed flush or a busy map (data may be lost)")
    for name, text in (("show", "one attachment as JSON"), ("extend", "resize after a grow")):
        sub.add_parser(name, parents=[common], help=text).add_argument("id")
    sub.add_parser("list", parents=[common], help="attachments as a table")
    sub.add_parser("connector", parents=[common], help="os-brick's connector properties")
    w = sub.add_parser("wait", parents=[common],
                       help="block until the volumes the agent restores at start-up are done")
    w.add_argument("--timeout", type=float, default=WAIT_TIMEOUT,
                   help=f"seconds (default {WAIT_TIMEOUT:g}: a restore with the default "
                        "restore_timeout and attach timeout)")
    sub.add_parser("health", parents=[common],
                   help="check the attached volumes now (exit 0 healthy, 1 degraded, 2 failed)")
    _local_parsers(sub, common)
    return p


LOCAL_COMMANDS = ("preflight", "multipath")


def _local_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("preflight", parents=[common],
                       help="check this node's prerequisites (no daemon needed)")
    p.add_argument("--portal", action="append", default=[],
                   help="ip[:port] of an array portal to reach; repeat for each")
    p.add_argument("--fc", action="store_true", help="also check Fibre Channel")
    p.add_argument("--connect-timeout", type=float, metavar="SECONDS",
                   help="for each portal's TCP connect (default 3)")
    m = sub.add_parser("multipath", parents=[common],
                       help="hostagent's vendor multipath settings (no daemon needed)")
    m.add_argument("action", choices=("install", "check", "show"),
                   help="install the stanzas and reconfigure multipathd, and the udev rule "
                        "that keeps one LUN's change off its target's other disks; check "
                        "that they are in effect and nothing conflicts; show the effective "
                        "values")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    args.socket = getattr(args, "socket", None) or os.environ.get(SOCKET_ENV) or Config.socket
    if args.command in LOCAL_COMMANDS:
        # Imported here so the commands that only talk to the socket stay on the
        # standard library (pyroute2 and asyncio alone cost ~0.2 s per call).
        from hostagent.cli import local
        return local.main(args)
    try:
        answer, text = run(args)
    except ClientError as err:
        if args.json:
            print(json.dumps(err.to_dict(), indent=2))
        print(f"hostagent-cli: {err.message}", file=sys.stderr)
        if err.details.get("field"):
            print(f"  field: {err.details['field']}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("hostagent-cli: interrupted; the agent finishes the operation on its own "
              "(see 'hostagent-cli list')", file=sys.stderr)
        return ExitCode.FAILED
    print(json.dumps(answer, indent=2) if args.json else text)
    return health_exit(answer) if args.command == "health" else ExitCode.OK
