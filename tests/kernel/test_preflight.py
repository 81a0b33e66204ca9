"""Preflight and the vendor multipath settings on the guest's real kernel and daemons.

hostagent-cli runs as an operator would run it (a process of its own); the guest
prepared by the test bed is a ready node, and each fault is then made for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pyudev

from hostagent.cli.local import checks_table
from hostagent.host.udev import wakes_waiters
from hostagent.models import Device
from hostagent.node.mpathconf import effective, load_stanzas, mapped_timeouts, parse
from hostagent.node.preflight import Check, Status
from hostagent.node.udevrule import OVERRIDE
from tests.kernel import pystarts
from tests.kernel import rawtools as raw
from tests.kernel.engine import check_data
from tests.kernel.test_fc_connector import native_host as fc_native_host
from tests.kernel.test_iscsi_connector import native_host
from tests.kernel.testbed import guest as guest_mod
from tests.kernel.testbed import probe
from tests.kernel.testbed.faults import Faults
from tests.kernel.testbed.fcoe import FC_RPORTS, FcArray
from tests.kernel.testbed.lio import IscsiArray
from tests.kernel.testbed.sh import run, wait_until

CONF_DIR = Path("/etc/multipath/conf.d")
# Where preflight's remedy for Datera's checker_timeout says to put it.
CHECKER_CONF = CONF_DIR / "checker_timeout.conf"
INITIATOR_FILE = Path("/etc/iscsi/initiatorname.iscsi")
UDEV_RULE = Path(OVERRIDE)
SILK_DEV_LOSS_TMO = 3  # what Silk publishes for K2 (kaminario.conf says why not ours)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return pystarts.cli(*args, timeout=300)


def report(name: str, text: str) -> None:
    """Keep a table for the record (results/) and show it in the test's output."""
    print(f"\n{name}:\n{text}")
    out = Path(os.environ.get("HOSTAGENT_RESULTS", "/tmp")) / f"{name}.txt"
    out.write_text(text)


def preflight_doc(portals: list[str]) -> tuple[int, dict[str, Any]]:
    answer = cli("preflight", "--json", *(a for p in portals for a in ("--portal", p)))
    doc: dict[str, Any] = json.loads(answer.stdout)
    assert answer.returncode == {"pass": 0, "warn": 1, "fail": 2}[doc["status"]], answer.stderr
    return answer.returncode, doc


def preflight(portals: list[str], *, name: str | None = None) -> tuple[int, dict[str, str]]:
    returncode, doc = preflight_doc(portals)
    if name:  # the table hostagent-cli prints, made from the same answer
        report(name, checks_table([Check(c["id"], Status(c["status"]), c["detail"], c["remedy"])
                                   for c in doc["checks"]]))
    failing = {c["id"]: c for c in doc["checks"] if c["status"] != "pass"}
    for check in failing.values():
        assert check["remedy"], check
    return returncode, {i: f"{c['status']}: {c['remedy']}" for i, c in failing.items()}


@pytest.fixture
def stanzas(guest: guest_mod.Guest) -> Iterator[None]:
    """hostagent's vendor settings installed for the test, the test bed's own after it."""
    installed = cli("multipath", "install")
    assert installed.returncode == 0, installed.stderr
    assert "multipathd reconfigured" in installed.stdout, installed.stdout
    assert f"written {UDEV_RULE} (missing before); udev reloaded" in installed.stdout
    yield
    for stanza in {s.file for s in load_stanzas()}:
        (CONF_DIR / stanza).unlink(missing_ok=True)
    CHECKER_CONF.unlink(missing_ok=True)
    guest_mod.set_find_multipaths("no")
    remove_udev_rule()


def remove_udev_rule() -> None:
    UDEV_RULE.unlink(missing_ok=True)
    run(["udevadm", "control", "--reload"])


@pytest.fixture
def portals(array: IscsiArray) -> list[str]:
    # The two dummy-interface portals (the array is made with 3): lo's MTU (65536)
    # would differ from theirs.
    assert len(array.portals) == 3
    return array.portals[1:]


@pytest.mark.parametrize("array", [3], indirect=True)
def test_a_prepared_guest_passes_and_each_fault_is_found_with_its_remedy(
        stanzas: None, array: IscsiArray, portals: list[str], faults: Faults) -> None:
    array.export_datera()  # LIO listens on a portal only while a target uses it
    # The stanzas alone: Datera's host-wide checker_timeout is left to the operator ...
    status, failing = preflight(portals)
    assert status == 1 and set(failing) == {"multipath.datera.checker_timeout"}, failing
    remedy = failing["multipath.datera.checker_timeout"]
    assert f"{CHECKER_CONF}" in remedy and "multipathd reconfigure" in remedy
    # ... who does what the remedy says, and the node passes.
    CHECKER_CONF.write_text("defaults {\n\tchecker_timeout 5\n}\n")
    run(["multipathd", "reconfigure"])
    status, failing = preflight(portals, name="preflight-pass")
    assert (status, failing) == (0, {})

    first = portals[0]
    saved_initiator = INITIATOR_FILE.read_text()
    run(["multipathd", "shutdown"])
    wait_until(lambda: run(["pgrep", "-x", "multipathd"], ok=(0, 1)).returncode == 1,
               timeout=30, what="multipathd to stop")
    try:
        INITIATOR_FILE.unlink()
        faults.block_portal(first)
        run(["ip", "link", "set", "dummy1", "mtu", "1400"])
        for stanza in {s.file for s in load_stanzas()}:
            (CONF_DIR / stanza).unlink()
        status, failing = preflight(portals, name="preflight-fail")
    finally:
        INITIATOR_FILE.write_text(saved_initiator)
        faults.unblock_portal(first)
        run(["ip", "link", "set", "dummy1", "mtu", "1500"])
        guest_mod.set_find_multipaths("no", start=True)
    assert status == 2
    assert set(failing) == {"service.multipathd", "iscsi.initiator_name",
                            f"portal.{first}.connect", "portals.mtu", "multipath.datera",
                            "multipath.kmnrio"}, failing
    assert "systemctl enable --now multipathd" in failing["service.multipathd"]
    assert "iscsi-iname" in failing["iscsi.initiator_name"]
    assert "firewall" in failing[f"portal.{first}.connect"]
    assert failing["portals.mtu"].startswith("warn")
    assert "hostagent-cli multipath install" in failing["multipath.datera"]
    # Put back, the node passes again.
    assert cli("multipath", "install").returncode == 0
    assert preflight(portals) == (0, {})


@dataclass
class LunChange:
    disk_changes: int  # change events of the paths' disks (kernel netlink)
    # What the agent's watcher reads (udev netlink, scsi and block, unparsed) by
    # whether it wakes its waiters.
    datagrams: dict[bool, list[bytes]]


def after_a_lun_change(array: IscsiArray, device: Device) -> LunChange:
    """Export one more LUN on the volume's target, have one of its paths' SCSI
    devices get the array's REPORTED LUNS DATA HAS CHANGED, and gather the events
    until udev has handled everything that followed."""
    run(["udevadm", "settle", "--timeout=60"], timeout=70)
    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
    monitor.start()
    watched = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
    for subsystem in ("block", "scsi"):  # as PyudevWatcher's
        watched.filter_by(subsystem)
    watched.start()
    array.export_k2()
    for path in device.paths:  # takes the unit attention now, not at the next path check
        run(["dd", f"if=/dev/{path.device}", "of=/dev/null", "bs=4096", "count=1",
             "iflag=direct"])
    events: list[tuple[str, str, str]] = []
    paths = {p.hctl for p in device.paths}

    def lun_change_seen() -> bool:
        # LIO keeps the unit attention per initiator and LUN, not per session: the
        # first path to send a command takes it, the other never sees it.
        while (dev := monitor.poll(timeout=0)) is not None:
            events.append((dev.action or "", dev.subsystem or "", dev.sys_name))
            if dev.sys_name in paths and dev.properties.get("SDEV_UA") == LUN_CHANGE:
                return True
        return False
    try:
        wait_until(lun_change_seen, timeout=60, what=f"{LUN_CHANGE} on one of {sorted(paths)}")
    except AssertionError as err:
        raise AssertionError(f"{err}; the events seen: {events}") from None
    run(["udevadm", "settle", "--timeout=60"], timeout=70)
    while (dev := monitor.poll(timeout=1)) is not None:
        events.append((dev.action or "", dev.subsystem or "", dev.sys_name))
    print(f"events after the LUN change: {events}")
    datagrams: dict[bool, list[bytes]] = {True: [], False: []}
    os.set_blocking(watched.fileno(), False)
    with contextlib.suppress(BlockingIOError):
        while datagram := os.read(watched.fileno(), 1 << 16):
            datagrams[wakes_waiters(datagram)].append(datagram)
    return LunChange(sum(events.count(("change", "block", p.device)) for p in device.paths),
                     datagrams)


def properties(datagram: bytes) -> set[bytes]:
    """KEY=VALUE entries of a udev netlink message (after libudev's header)."""
    return set(datagram.split(b"\0"))


LUN_CHANGE = "REPORTED_LUNS_DATA_HAS_CHANGED"


def test_the_udev_rule_keeps_a_new_lun_off_the_other_disks_of_its_target(
        stanzas: None, array: IscsiArray) -> None:
    """With `multipath install`'s rule the guest's udev does not pass the event on to
    an attached volume's disks (no disk rules re-run, no change for multipathd);
    without it, it does."""
    host, export = native_host(), array.export_k2()
    device = asyncio.run(host.attach(export))
    try:
        assert "udev.lun_change" not in preflight(array.portals)[1]
        assert after_a_lun_change(array, device).disk_changes == 0
        remove_udev_rule()
        stock = after_a_lun_change(array, device)
        assert stock.disk_changes >= 1
        assert preflight(array.portals)[1]["udev.lun_change"].endswith(
            "hostagent-cli multipath install`")
    finally:
        asyncio.run(host.detach(export, device))
    # The agent's udev watcher: the SCSI device's LUN change wakes no wait, the disk
    # changes udev's stock rule made of it do.
    quiet, woken = stock.datagrams[False], stock.datagrams[True]
    assert quiet and all({b"ACTION=change", b"SUBSYSTEM=scsi", b"SDEV_UA=" + LUN_CHANGE.encode()}
                         <= properties(d) for d in quiet)
    assert any({b"ACTION=change", b"SUBSYSTEM=block"} <= properties(d) for d in woken)
    results = Path(os.environ.get("HOSTAGENT_RESULTS", "/tmp"))
    (results / "udev_lun_change.bin").write_bytes(quiet[0])
    (results / "udev_block_change.bin").write_bytes(
        next(d for d in woken if b"SUBSYSTEM=block" in properties(d)))


def multipath_ll(wwid: str) -> str:
    return run(["multipath", "-ll", wwid]).stdout


def session_of(hctl: str) -> Path:
    """/sys/class/iscsi_session/sessionN of the session behind SCSI device H:C:T:L."""
    dev = Path(f"/sys/class/scsi_device/{hctl}/device").resolve()
    session = next(p.name for p in dev.parents if p.name.startswith("session"))
    return Path("/sys/class/iscsi_session") / session


def replacement_timeout(iqn: str, portal: str) -> int:
    """The node record's replacement_timeout (hostagent's iface), what a login gets."""
    record = run(["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "-I", "hostagent"]).stdout
    (value,) = re.findall(r"^node\.session\.timeo\.replacement_timeout = (\d+)$", record, re.M)
    return int(value)


def recovery_tmos(device: Device) -> dict[str, int]:
    return {p.device: int((session_of(p.hctl) / "recovery_tmo").read_text())
            for p in device.paths}


def test_the_stanzas_shape_each_vendors_map(stanzas: None, array: IscsiArray) -> None:
    host = native_host()
    datera, k2 = array.export_datera(), array.export_k2()
    devices = [asyncio.run(host.attach(e)) for e in (datera, k2)]
    try:
        shown = {e.wwid: multipath_ll(e.wwid) for e in (datera, k2)}
        sessions = recovery_and_replacement(datera, k2, devices)
    finally:
        for export, device in zip((datera, k2), devices, strict=True):
            asyncio.run(host.detach(export, device))
    report("multipath-ll", "\n".join(shown.values()))
    report("recovery-tmo", sessions)
    d, k = shown[datera.wwid], shown[k2.wwid]
    # DATERA: group_by_prio over ALUA priorities (LIO reports active/optimized: 50),
    # the ALUA handler, queue-length; the test bed's no_path_retry 6 queues.
    assert "DATERA,IBLOCK" in d and "hwhandler='1 alua'" in d
    assert re.search(r"policy='queue-length 0' prio=50 status=active", d), d
    # KMNRIO: multibus, one group holding both paths; no_path_retry fail: no queueing.
    assert "KMNRIO,K2" in k and "features='0'" in k
    assert len(re.findall(r"policy='queue-length 0'", k)) == 1, k
    assert len(re.findall(r"\d+:\d+:\d+:\d+ sd[a-z]+", k)) == 2, k
    # What `multipath show` reports is what multipath -t resolves: every value in effect.
    shown_conf: dict[str, Any] = json.loads(cli("multipath", "show", "--json").stdout)
    for vendor in shown_conf["vendors"].values():
        for key, row in vendor.items():
            assert row["effective"] == row["wanted"] and row["source"] == "devices", key


def recovery_and_replacement(datera: Any, k2: Any, devices: list[Device]) -> str:
    """While both maps are up: each mapped session's recovery_tmo is the fast_io_fail_tmo
    multipath resolves for its vendor, not the node record's replacement_timeout, it is
    multipathd that writes it, and preflight reports the same value."""
    config = parse(run(["multipath", "-t"]).stdout)
    lines = []
    for export, device, (vendor, product) in zip(
            (datera, k2), devices, (("DATERA", "IBLOCK"), ("KMNRIO", "K2")), strict=True):
        wanted = mapped_timeouts(config, vendor, product).recovery_tmo
        assert wanted == int(effective(config, vendor, product, "fast_io_fail_tmo").value or 0)
        replacement = {p.portal: replacement_timeout(export.iqn, p.portal or "")
                       for p in device.paths}
        got = recovery_tmos(device)
        lines += [f"{vendor}/{product} {p.device} {session_of(p.hctl).name} recovery_tmo="
                  f"{got[p.device]} replacement_timeout={replacement[p.portal]} "
                  f"fast_io_fail_tmo={wanted}" for p in device.paths]
        assert set(got.values()) == {wanted}, lines
    k2_device = devices[1]
    (k2_value,) = set(recovery_tmos(k2_device).values())
    k2_replacement = replacement_timeout(k2.iqn, k2_device.paths[0].portal or "")
    assert k2_value == 2 and k2_value != k2_replacement, lines  # the stanza's, not iscsid's
    # multipathd writes it whenever it sets up the map: overwritten by hand, a
    # reconfigure (what `multipath install` does) puts it back.
    session = session_of(k2_device.paths[0].hctl)
    (session / "recovery_tmo").write_text("7")
    assert (session / "recovery_tmo").read_text().strip() == "7"
    run(["multipathd", "reconfigure"])
    wait_until(lambda: (session / "recovery_tmo").read_text().strip() == str(k2_value),
               timeout=30, what=f"multipathd to write recovery_tmo {k2_value} again")
    # Preflight says what mapped sessions get: the values just read.
    _, doc = preflight_doc([])
    (check,) = (c for c in doc["checks"] if c["id"] == "iscsi.timeouts")
    assert check["status"] == "pass", check
    assert f"KMNRIO/K2 recovery_tmo={k2_value} (fast_io_fail_tmo from devices)" \
        in check["detail"], check
    datera_value = set(recovery_tmos(devices[0]).values()).pop()
    assert f"DATERA/IBLOCK recovery_tmo={datera_value} " in check["detail"], check
    assert f"replacement_timeout={k2_replacement} (sessions no map uses)" in check["detail"]
    return "\n".join([*lines, f"preflight iscsi.timeouts: {check['detail']}"])


# ---- K2 over FC: what multipathd writes into the remote ports, and dev_loss_tmo ----------

def target_rports() -> list[Path]:
    return [r for r in FC_RPORTS.glob("rport-*") if "FCP Target" in read(r / "roles")]


def read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def rport_of(hctl: str) -> Path:
    dev = Path(f"/sys/class/scsi_device/{hctl}/device").resolve()
    return FC_RPORTS / next(p.name for p in dev.parents if p.name.startswith("rport-"))


@pytest.fixture
def rports_restored(fc_array: FcArray) -> Iterator[None]:
    """The remote ports' timeouts put back: they outlive the test (the fabric is the
    session's) and multipathd only writes the ones a vendor entry sets."""
    saved = {r: (read(r / "dev_loss_tmo"), read(r / "fast_io_fail_tmo"))
             for r in target_rports()}
    yield
    for port, (dev_loss, fast) in saved.items():
        (port / "dev_loss_tmo").write_text(dev_loss)
        (port / "fast_io_fail_tmo").write_text(fast)


def test_k2_fc_ports_get_the_stanza_timeouts_and_keep_their_disks_through_an_outage(
        stanzas: None, fc_array: FcArray, faults: Faults, rports_restored: None) -> None:
    config = parse(run(["multipath", "-t"]).stdout)
    wanted = mapped_timeouts(config, "KMNRIO", "K2")
    fast = effective(config, "KMNRIO", "K2", "fast_io_fail_tmo").value
    assert wanted.dev_loss_tmo is not None and wanted.dev_loss_tmo > SILK_DEV_LOSS_TMO + 5
    host = fc_native_host()
    export = fc_array.export()
    device = asyncio.run(host.attach(export))
    try:
        raw.assert_map(device, export.wwid, 2)
        ports = {p.device: rport_of(p.hctl) for p in device.paths}
        got = {sd: (read(r / "dev_loss_tmo"), read(r / "fast_io_fail_tmo"))
               for sd, r in ports.items()}
        lines = [f"{sd} {ports[sd].name} dev_loss_tmo={d} fast_io_fail_tmo={f}"
                 for sd, (d, f) in got.items()]
        assert set(got.values()) == {(str(wanted.dev_loss_tmo), fast)}, lines
        # Both links down past Silk's dev_loss_tmo: the ports stay Blocked, their disks
        # (the same kernel objects) and the map stay, and come back when the links do.
        identity = {sd: os.stat(f"/sys/block/{sd}").st_ino for sd in ports}
        dm = device.path.removeprefix("/dev/")
        map_identity = os.stat(f"/sys/block/{dm}").st_ino
        for link in range(len(fc_array.fabric.links)):
            faults.fc_link_down(link)
        wait_until(lambda: export.wwid in probe.maps() and
                   probe.maps()[export.wwid].active == 0, timeout=60,
                   what="multipathd to fail both paths")
        time.sleep(SILK_DEV_LOSS_TMO + 5)  # the outage lasts past Silk's dev_loss_tmo
        states = {sd: read(r / "port_state") for sd, r in ports.items()}
        lines.append(f"both links down {SILK_DEV_LOSS_TMO + 5} s after the paths failed: "
                     f"ports {states}, disks {sorted(raw.disks_with_wwid(export.wwid))}")
        assert set(states.values()) == {"Blocked"}, lines
        assert sorted(raw.disks_with_wwid(export.wwid)) == sorted(ports), lines
        for link in range(len(fc_array.fabric.links)):
            faults.fc_link_up(link)
            fc_array.fabric.wait_online(fc_array.fabric.links[link])
        raw.wait_map(export.wwid, 2, timeout=60)
        assert {sd: os.stat(f"/sys/block/{sd}").st_ino for sd in ports} == identity, lines
        assert os.stat(f"/sys/block/{dm}").st_ino == map_identity, lines
        check_data(device.path)
        report("fc-rport-timeouts", "\n".join(lines))
    finally:
        for link in range(len(fc_array.fabric.links)):
            faults.fc_link_up(link)
        asyncio.run(host.detach(export, device))
