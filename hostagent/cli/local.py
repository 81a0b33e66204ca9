"""hostagent-cli commands that run on the node itself, without the daemon:
`preflight` and `multipath install|check|show` (their arguments are parsed in
cli.py); `multipath install` also writes the udev rule of node/udevrule.py. They
need root for most checks."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from hostagent.connection_info import parse_portal
from hostagent.errors import HostAgentError, InvalidConfig, InvalidRequest
from hostagent.exitcodes import CheckExit, ExitCode
from hostagent.node.mpathconf import MultipathConfig, effective
from hostagent.node.preflight import Check, Options, Status, overall, report
from hostagent.node.tools import Host, real_host
from hostagent.node.udevrule import RuleInstall, RuleState

_EXIT = {Status.PASS: CheckExit.PASS, Status.WARN: CheckExit.WARN, Status.FAIL: CheckExit.FAIL}


def options(args: argparse.Namespace) -> Options:
    portals = tuple(parse_portal(p, f"--portal[{i}]") for i, p in enumerate(args.portal))
    timeout = Options.connect_timeout if args.connect_timeout is None else args.connect_timeout
    if not 0 < timeout <= 60:
        raise InvalidRequest("--connect-timeout", "must be above 0 and at most 60 seconds")
    return Options(portals, args.fc, timeout)


def checks_table(checks: Sequence[Check]) -> str:
    width = max((len(c.id) for c in checks), default=5)
    lines = [f"{'STATUS':6}  {'CHECK':{width}}  DETAIL"]
    for c in checks:
        lines.append(f"{c.status.upper() if c.status != Status.PASS else 'pass':6}  "
                     f"{c.id:{width}}  {c.detail}")
        if c.remedy:
            lines.append(f"{'':6}  {'':{width}}  remedy: {c.remedy}")
    counts = {s: sum(c.status == s for c in checks) for s in Status}
    lines.append(f"{len(checks)} checks: {counts[Status.PASS]} pass, {counts[Status.WARN]} "
                 f"warn, {counts[Status.FAIL]} fail")
    return "\n".join(lines)


async def _show(mpconf: MultipathConfig) -> tuple[dict[str, Any], str]:
    config = await mpconf.effective_config()
    answer: dict[str, Any] = {"config_dir": mpconf.config_dir(), "vendors": {}}
    lines = [f"config_dir: {answer['config_dir']}"]
    for s in mpconf.stanzas:
        rows = {}
        lines.append(f"{s.name} ({s.file}):")
        for key, wanted in s.attrs:
            got = effective(config, s.vendor, s.product, key)
            rows[key] = {"wanted": wanted, "effective": got.value, "source": got.source}
            mark = "" if got.value == wanted else f"   <- wanted {wanted!r}"
            lines.append(f"  {key:22} {got.value!s:20} ({got.source}){mark}")
        answer["vendors"][s.name] = rows
    return answer, "\n".join(lines)


async def _run(args: argparse.Namespace, host: Host) -> tuple[Any, str, int]:
    if args.command == "preflight":
        checks = await host.preflight.run(options(args))
        return report(checks), checks_table(checks), _EXIT[overall(checks)]
    if args.action == "check":
        checks = await host.preflight.multipath()
        return report(checks), checks_table(checks), _EXIT[overall(checks)]
    if args.action == "show":
        answer, text = await _show(host.mpconf)
        return answer, text, ExitCode.OK
    result = await host.mpconf.install()
    rule = await host.udev.install()
    text = "\n".join([*(f"installed {f}" for f in result.written),
                      *(f"unchanged {f}" for f in result.unchanged),
                      *(["created a minimal multipath.conf"] if result.created_conf else []),
                      "multipathd reconfigured" if result.reconfigured
                      else "multipathd is not running; the settings apply when it starts",
                      _rule_line(rule)])
    return {"written": result.written, "unchanged": result.unchanged,
            "created_conf": result.created_conf, "reconfigured": result.reconfigured,
            "udev_rule": {"path": rule.path, "found": str(rule.found), "action": rule.action}
            }, text, 0


def _rule_line(rule: RuleInstall) -> str:
    if rule.action == "left alone":
        return (f"left {rule.path} alone: it is not hostagent's and forwards REPORTED LUNS "
                "DATA HAS CHANGED to the disks (`multipath check` says what to add)")
    if rule.action == "unchanged":
        return (f"unchanged {rule.path}" if rule.found == RuleState.IN_EFFECT else
                "no udev rule needed: none forwards REPORTED LUNS DATA HAS CHANGED to the disks")
    return f"{rule.action} {rule.path} ({rule.found} before); udev reloaded"


def main(args: argparse.Namespace, host_factory: Callable[[], Host] | None = None) -> int:
    """Run a local command; print its JSON answer or its human form; the exit status."""
    if os.geteuid() != 0:
        print("hostagent-cli: not root: multipathd's socket and some files may be out of "
              "reach, and those checks fail for that reason", file=sys.stderr)
    try:
        answer, text, status = asyncio.run(_run(args, (host_factory or real_host)()))
    except HostAgentError as err:
        if args.json:
            print(json.dumps({"error": err.to_dict()}, indent=2))
        print(f"hostagent-cli: {err.message}", file=sys.stderr)
        if isinstance(err, InvalidRequest):
            print(f"  field: {err.field}", file=sys.stderr)
        return ExitCode.for_error(err) if not isinstance(err, InvalidConfig) else ExitCode.CONFIG
    print(json.dumps(answer, indent=2) if args.json else text)
    return status
