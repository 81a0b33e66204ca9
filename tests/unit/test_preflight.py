"""Preflight: every check passing and failing, on a node tree and scripted seams."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hostagent.cli import main as cli
from hostagent.errors import CommandNotFound
from hostagent.exitcodes import CheckExit, ExitCode
from hostagent.host.fc import FcHba
from hostagent.host.net import Route
from hostagent.models import Portal
from hostagent.node.mpathconf import load_stanzas, mapped_timeouts, parse
from hostagent.node.preflight import (
    Check,
    Options,
    Preflight,
    Status,
    fc_check,
    host_default_check,
    initiator_check,
    iscsid_conf_check,
    module_check,
    mtu_check,
    multipath_checks,
    overall,
    portal_checks,
)
from hostagent.node.tools import Host
from tests.unit.preflighthost import (
    GOOD_ISCSID,
    MULTIPATH_T_BUILTIN,
    MULTIPATH_T_INSTALLED,
    MULTIPATH_T_STANZAS,
    Node,
)


def by_id(checks: list[Check]) -> dict[str, Check]:
    ids = [c.id for c in checks]
    assert len(ids) == len(set(ids)), ids
    return {c.id: c for c in checks}


def run(node: Node, options: Options | None = None) -> dict[str, Check]:
    checks = asyncio.run(node.preflight.run(options or Options()))
    node.executor.assert_done()
    return by_id(checks)


def failing(checks: dict[str, Check]) -> dict[str, Status]:
    return {i: c.status for i, c in checks.items() if c.status != Status.PASS}


# ---- the whole run on a prepared node and on broken ones ------------------------------

def test_a_prepared_node_passes_every_check(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.expect_checks()
    portals = (Portal(node.add_portal("10.0.0.2"), 3260), Portal(node.add_portal("10.0.1.2")))
    checks = run(node, Options(portals, fc=False))
    assert failing(checks) == {}
    assert {"binary.iscsiadm", "binary.sg_inq", "service.iscsid", "service.multipathd",
            "module.iscsi_tcp", "module.dm_multipath", "iscsi.initiator_name",
            "iscsi.timeouts", "multipath.conf", "multipath.datera", "multipath.kmnrio",
            "connector.ip",
            "portal.10.0.0.2:3260.route", "portal.10.0.1.2:3260.connect"} <= set(checks)
    assert "module.scsi_transport_fc" not in checks and "fc.hbas" not in checks
    assert all(not c.remedy for c in checks.values())


def test_each_fault_is_found_with_its_remedy(tmp_path: Path) -> None:
    node = Node(tmp_path)
    (node.root / "usr/sbin/multipathd").unlink()
    (node.root / "usr/bin/sg_inq").chmod(0o644)  # present but not executable
    (node.root / "etc/iscsi/initiatorname.iscsi").unlink()
    (node.root / "sys/module/dm_multipath").rmdir()
    node.mpd.running = False
    node.executor.expect(["modprobe", "--dry-run", "--quiet", "dm_multipath"], returncode=1)
    node.expect_checks(multipath_t=MULTIPATH_T_BUILTIN, iscsiadm_rc=20)
    a = Portal(node.add_portal("10.0.0.2", mtu=9000))
    b = Portal(node.add_portal("10.0.1.2", ifname="eth2", mtu=1500))
    node.net.refused.add("10.0.1.2")
    checks = run(node, Options((a, b)))
    assert failing(checks) == {
        "binary.multipathd": Status.FAIL, "binary.sg_inq": Status.WARN,
        "service.iscsid": Status.FAIL, "service.multipathd": Status.FAIL,
        "module.dm_multipath": Status.FAIL, "iscsi.initiator_name": Status.FAIL,
        "multipath.datera": Status.FAIL, "multipath.kmnrio": Status.FAIL,
        "multipath.datera.checker_timeout": Status.WARN,
        "portal.10.0.1.2:3260.connect": Status.FAIL, "portals.mtu": Status.WARN}
    assert checks["binary.multipathd"].packages == {"debian": "multipath-tools",
                                                    "rhel": "device-mapper-multipath"}
    assert "apt-get install multipath-tools" in checks["binary.multipathd"].remedy
    assert "dnf install device-mapper-multipath" in checks["binary.multipathd"].remedy
    assert "systemctl enable --now multipathd" in checks["service.multipathd"].remedy
    assert "iscsi-iname" in checks["iscsi.initiator_name"].remedy
    assert "hostagent-cli multipath install" in checks["multipath.datera"].remedy
    assert "group_by_prio" in checks["multipath.datera"].detail
    assert "timed out" in checks["portal.10.0.1.2:3260.connect"].detail
    assert "MTU 1500" in checks["portals.mtu"].detail and "eth2" in checks["portals.mtu"].detail
    assert all(c.remedy for c in checks.values() if c.status != Status.PASS)
    assert overall(checks.values()) == Status.FAIL


def test_fc_checks_only_when_asked(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.expect_checks()
    checks = run(node, Options(fc=True))
    assert checks["module.scsi_transport_fc"].status == Status.PASS
    assert checks["fc.hbas"].status == Status.FAIL  # the tree has no fc_host


def test_multipath_missing_is_one_failing_check(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.executor.expect(["iscsiadm", "-m", "session"], returncode=21)

    def not_installed() -> None:
        raise CommandNotFound("multipath")
    node.executor.expect(["multipath", "-t"], side_effect=not_installed)
    checks = run(node)
    assert checks["multipath.config"].status == Status.FAIL
    assert "multipath-tools" in checks["multipath.config"].remedy
    assert "multipath.datera" not in checks
    # Without multipath's settings, replacement_timeout is judged for every session.
    assert checks["iscsi.timeouts"].detail == \
        "replacement_timeout=5, noop_out_interval=2, noop_out_timeout=2"


# ---- the pure decisions ------------------------------------------------------------------

@pytest.mark.parametrize("text, status", [
    ("InitiatorName=iqn.2026-11.org.example:node-1\n", Status.PASS),
    ("## comment\nInitiatorName=iqn.1993-08.org.debian:01:8f1b9db86444\n", Status.PASS),
    ("InitiatorName=eui.02004567A425678D\n", Status.PASS),
    ("GenerateName=yes\n", Status.FAIL),
    ("InitiatorName=iqn.1993-08.org.debian:01:\n", Status.FAIL),
    ("InitiatorName=iqn.2005-03.org.open-iscsi\n", Status.FAIL),
    ("InitiatorName=not an iqn\n", Status.FAIL),
    (None, Status.FAIL),
])
def test_initiator_name(text: str | None, status: Status) -> None:
    check = initiator_check(text)
    assert check.status == status, check
    assert bool(check.remedy) == (status != Status.PASS)


@pytest.mark.parametrize("text, status, word", [
    ("node.session.timeo.replacement_timeout = 10\n", Status.PASS, "replacement_timeout=10"),
    ("", Status.WARN, "= 120"),  # open-iscsi's default
    ("node.session.timeo.replacement_timeout = 5\nnode.conn[0].timeo.noop_out_interval = 0\n",
     Status.WARN, "noop_out_interval = 0"),
    ("# node.session.timeo.replacement_timeout = 5\n", Status.WARN, "= 120"),
    ("node.session.timeo.replacement_timeout = soon\n", Status.WARN, "not a number"),
    (None, Status.WARN, "missing"),
])
def test_iscsid_timeouts(text: str | None, status: Status, word: str) -> None:
    check = iscsid_conf_check(text)
    assert check.status == status and word in check.detail, check


# ---- iscsi.timeouts: what a mapped session really uses ----------------------------------

def timeouts_with(multipath_t: str, iscsid: str) -> Check:
    config = parse(multipath_t)
    return iscsid_conf_check(iscsid, [(s.name, mapped_timeouts(config, s.vendor, s.product))
                                      for s in load_stanzas()])


def test_a_prepared_node_reports_what_mapped_sessions_use(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.expect_checks()
    check = run(node)["iscsi.timeouts"]
    assert check.status == Status.PASS
    assert check.detail == (
        "replacement_timeout=5 (sessions no map uses), noop_out_interval=2, "
        "noop_out_timeout=2; mapped sessions (multipathd writes fast_io_fail_tmo into their "
        "recovery_tmo): DATERA/IBLOCK recovery_tmo=5 (fast_io_fail_tmo from defaults), "
        "KMNRIO/K2 recovery_tmo=2 (fast_io_fail_tmo from devices)")


def test_a_long_replacement_timeout_only_matters_where_a_mapped_session_keeps_it() -> None:
    # open-iscsi's default 120 s: every vendor's maps replace it, so it passes ...
    check = timeouts_with(MULTIPATH_T_STANZAS, "")
    assert check.status == Status.PASS
    assert "replacement_timeout=120 (sessions no map uses)" in check.detail
    # ... until fast_io_fail_tmo is off for a vendor: its mapped sessions keep 120 s.
    off = MULTIPATH_T_STANZAS + 'devices {\n device {\n  vendor "KMNRIO"\n  product "K2"\n' \
        '  fast_io_fail_tmo "off"\n }\n}\n'
    check = timeouts_with(off, "")
    assert check.status == Status.WARN
    assert "replacement_timeout = 120 (wanted 1..20 with multipath; KMNRIO/K2 mapped " \
        "sessions keep it)" in check.detail
    assert "KMNRIO/K2 recovery_tmo=replacement_timeout (fast_io_fail_tmo off (from " \
        "devices) cannot be written to a session)" in check.detail
    assert "DATERA/IBLOCK recovery_tmo=5" in check.detail
    assert "/etc/iscsi/iscsid.conf" in check.remedy
    assert timeouts_with(off, GOOD_ISCSID).status == Status.PASS


def test_without_vendor_stanzas_replacement_timeout_is_judged_for_every_session() -> None:
    check = iscsid_conf_check("", [])
    assert check.status == Status.WARN and "= 120 (wanted 1..20" in check.detail, check
    assert "mapped sessions (multipathd writes fast_io_fail_tmo into their recovery_tmo): " \
        "no vendor stanza" in check.detail


def test_a_long_fast_io_fail_tmo_from_overrides_is_found() -> None:
    slow = MULTIPATH_T_STANZAS + "overrides {\n fast_io_fail_tmo 30\n}\n"
    check = timeouts_with(slow, GOOD_ISCSID)
    assert check.status == Status.WARN
    assert "KMNRIO/K2 mapped sessions get recovery_tmo=30 (fast_io_fail_tmo from overrides; " \
        "wanted 1..20)" in check.detail
    assert "hostagent-cli multipath install" in check.remedy
    assert "iscsid.conf" not in check.remedy


# ---- Datera's checker_timeout: a default the stanza cannot carry -------------------------

def test_datera_checker_timeout_unset_warns_with_the_way_to_set_it(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("/etc/multipath.conf", 'defaults {\n user_friendly_names no\n'
               ' config_dir "/etc/mp.d"\n}\n')
    node.expect_checks(multipath_t=MULTIPATH_T_INSTALLED)
    checks = run(node)
    assert failing(checks) == {"multipath.datera.checker_timeout": Status.WARN}
    check = checks["multipath.datera.checker_timeout"]
    assert check.detail.startswith("checker_timeout is unset: a path checker waits for the "
                                   "path's SCSI command timeout")
    assert "sets checker_timeout 5 for DATERA/IBLOCK" in check.detail
    assert "add `checker_timeout 5` to the defaults section of /etc/multipath.conf" \
        in check.remedy
    assert "`defaults { checker_timeout 5 }` in a file of its own in /etc/mp.d (e.g. " \
        "/etc/mp.d/checker_timeout.conf)" in check.remedy  # the node's config_dir
    assert "`multipathd reconfigure`" in check.remedy
    assert "every array's paths" in check.remedy
    assert "multipath.kmnrio.checker_timeout" not in checks  # only Datera asks for it


@pytest.mark.parametrize("value, status, shown", [
    ("5", Status.PASS, "checker_timeout 5 (defaults)"),
    ("30", Status.WARN, "checker_timeout is 30"),
    ("2", Status.WARN, "checker_timeout is 2"),
])
def test_datera_checker_timeout_must_be_datera_s(value: str, status: Status, shown: str
                                                 ) -> None:
    config = parse(MULTIPATH_T_INSTALLED + f"defaults {{\n checker_timeout {value}\n}}\n")
    (datera,) = (s for s in load_stanzas() if s.vendor == "DATERA")
    (want,) = datera.host_defaults
    check = host_default_check(config, datera, want)
    assert check.status == status and check.detail.startswith(shown), check
    assert bool(check.remedy) == (status != Status.PASS)


def test_modules() -> None:
    assert module_check("iscsi_tcp", True, True).status == Status.PASS
    assert "loadable" in module_check("iscsi_tcp", False, True).detail
    assert module_check("iscsi_tcp", False, False).status == Status.FAIL
    assert "no modprobe" in module_check("iscsi_tcp", False, None).detail


def test_portal_route_down_and_unroutable() -> None:
    p = Portal("10.0.0.2")
    down = portal_checks(p, Route("10.0.0.2", "eth1", False, None, 1500), None)
    assert down[0].status == Status.FAIL and "ip link set eth1 up" in down[0].remedy
    assert down[1].status == Status.PASS
    unroutable = portal_checks(p, OSError(101, "unreachable"), ConnectionRefusedError(111, "no"))
    assert [c.status for c in unroutable] == [Status.FAIL, Status.FAIL]


def test_mtu_check_only_when_mtus_differ() -> None:
    same = [Route(f"10.0.{i}.2", f"eth{i}", True, None, 9000) for i in range(2)]
    assert mtu_check(same) is None
    assert mtu_check([*same, Route("10.0.9.2", "eth9", True, None, 1500)]) is not None


def test_fc_hbas() -> None:
    online = FcHba(5, "21000024ff000001", "20000024ff000001", "Online")
    down = FcHba(6, "21000024ff000002", "20000024ff000002", "Linkdown")
    assert fc_check([online, down]).status == Status.PASS
    assert "21000024ff000001" in fc_check([online, down]).detail
    assert "host6 Linkdown" in fc_check([down]).detail
    assert fc_check([]).status == Status.FAIL


# ---- hostagent-cli preflight / multipath ------------------------------------------------

def cli_run(node: Node, argv: list[str], capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.setattr("hostagent.cli.local.real_host", lambda: Host(node.preflight,
                                                                     node.mpconf, node.udev))
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_preflight_table_json_and_exit_status(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(tmp_path)
    node.expect_checks()
    node.add_portal("10.0.0.2")
    status, out, _ = cli_run(node, ["preflight", "--portal", "10.0.0.2"], capsys, monkeypatch)
    assert status == CheckExit.PASS
    assert out.splitlines()[0].split() == ["STATUS", "CHECK", "DETAIL"]
    assert "portal.10.0.0.2:3260.connect" in out and out.rstrip().endswith("0 warn, 0 fail")
    node.expect_checks(multipath_t=MULTIPATH_T_INSTALLED)  # no checker_timeout 5
    status, out, _ = cli_run(node, ["preflight", "--json"], capsys, monkeypatch)
    doc = json.loads(out)
    assert status == CheckExit.WARN and doc["status"] == "warn"
    warned = [c for c in doc["checks"] if c["status"] == "warn"]
    assert [c["id"] for c in warned] == ["multipath.datera.checker_timeout"]
    assert warned[0]["remedy"]


def test_cli_preflight_refuses_a_bad_portal_before_any_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(tmp_path)
    status, _, err = cli_run(node, ["preflight", "--portal", "10.0.0.2;reboot"], capsys,
                             monkeypatch)
    assert status == ExitCode.INVALID and "field: --portal[0]" in err
    assert node.executor.calls == [] and node.net.connects == []


def test_cli_multipath_show_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    node = Node(tmp_path)
    node.executor.expect(["multipath", "-t"], stdout=MULTIPATH_T_BUILTIN, times=2)
    status, out, _ = cli_run(node, ["multipath", "show"], capsys, monkeypatch)
    assert status == ExitCode.OK and "<- wanted 'group_by_prio'" in out
    status, out, _ = cli_run(node, ["multipath", "check", "--json"], capsys, monkeypatch)
    assert status == CheckExit.FAIL
    assert {c["id"]: c["status"] for c in json.loads(out)["checks"]} == {
        "multipath.conf": "pass", "multipath.datera": "fail", "multipath.kmnrio": "fail",
        "multipath.datera.checker_timeout": "warn", "udev.lun_change": "pass"}


def test_cli_multipath_install_reports_what_it_did(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(tmp_path)
    node.executor.expect(["multipath", "-t"], stdout=MULTIPATH_T_BUILTIN)
    status, _, err = cli_run(node, ["multipath", "install"], capsys, monkeypatch)
    assert status == ExitCode.CONFIG and "did not take effect" in err


def test_multipath_checks_report_a_hiding_blacklist_and_friendly_names() -> None:
    hidden = parse(MULTIPATH_T_STANZAS + 'blacklist {\n device {\n vendor ".*"\n }\n}\n'
                   'blacklist_exceptions {\n device {\n vendor "DATERA"\n }\n}\n')
    checks = by_id(multipath_checks("", hidden, load_stanzas()))
    assert checks["multipath.datera"].status == Status.PASS
    assert checks["multipath.kmnrio"].status == Status.FAIL
    assert 'vendor ".*"' in checks["multipath.kmnrio"].detail
    assert "blacklist_exceptions" in checks["multipath.kmnrio"].remedy
    friendly = parse(MULTIPATH_T_STANZAS + "defaults {\n user_friendly_names yes\n}\n")
    checks = by_id(multipath_checks(None, friendly, load_stanzas()))
    assert checks["multipath.conf"].status == Status.WARN
    assert {checks[i].status for i in ("multipath.datera", "multipath.kmnrio")} == {Status.WARN}
    assert "user_friendly_names no" in checks["multipath.datera"].remedy


def test_each_run_reports_its_counts_per_status(tmp_path: Path) -> None:
    node = Node(tmp_path)
    seen: list[dict[str, int]] = []
    preflight = Preflight(node.fs, node.executor, node.mpd, node.net, node.mpconf, node.udev,
                          observe=lambda counts: seen.append(dict(counts)), local=node.local)
    node.expect_checks(multipath_t=MULTIPATH_T_INSTALLED)
    checks = asyncio.run(preflight.run())
    assert seen == [{"pass": len(checks) - 1, "warn": 1, "fail": 0}]


# ---- connector.ip: never loopback (Datera picks its access network by it) --------------

@pytest.mark.parametrize(("my_ip", "sources", "status", "says"), [
    (None, ["192.0.2.2", None], Status.PASS, "192.0.2.2 (the default route's source"),
    ("10.20.30.40", ["192.0.2.2", None], Status.PASS, "10.20.30.40 ([DEFAULT] my_ip)"),
    ("127.0.0.1", ["192.0.2.2", None], Status.WARN, "a loopback address"),
    ("::1", [None, None], Status.WARN, "a loopback address"),
])
def test_the_connectors_ip_is_checked(tmp_path: Path, my_ip: str | None,
                                      sources: list[str | None], status: Status,
                                      says: str) -> None:
    node = Node(tmp_path)
    node.local.sources = sources
    preflight = Preflight(node.fs, node.executor, node.mpd, node.net, node.mpconf, node.udev,
                          my_ip=my_ip, local=node.local)
    node.expect_checks(multipath_t=MULTIPATH_T_INSTALLED)
    check = {c.id: c for c in asyncio.run(preflight.run())}["connector.ip"]
    assert check.status == status and says in check.detail
    assert ("[DEFAULT] my_ip" in check.remedy) == (status == Status.WARN)


def test_a_host_with_only_loopback_and_link_local_addresses_is_warned(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.local.sources = [None, None]
    node.local.dump = [a for a in node.local.dump if a.name == "lo" or a.scope]
    node.expect_checks(multipath_t=MULTIPATH_T_INSTALLED)
    check = {c.id: c for c in asyncio.run(node.preflight.run())}["connector.ip"]
    assert check.status == Status.WARN and "ip is null" in check.detail
