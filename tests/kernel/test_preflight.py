"""Preflight and the vendor multipath settings on the guest's real kernel and daemons.

hostagent-cli runs as an operator would run it (a process of its own); the guest
prepared by the test bed is a ready node, and each fault is then made for real.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostagent.cli.local import checks_table
from hostagent.node.mpathconf import load_stanzas
from hostagent.node.preflight import Check, Status
from tests.kernel.test_iscsi_connector import native_host
from tests.kernel.testbed import guest as guest_mod
from tests.kernel.testbed.faults import Faults
from tests.kernel.testbed.lio import IscsiArray
from tests.kernel.testbed.sh import run, wait_until

CONF_DIR = Path("/etc/multipath/conf.d")
INITIATOR_FILE = Path("/etc/iscsi/initiatorname.iscsi")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from hostagent.cli.main import main; sys.exit(main())",
         *args], capture_output=True, text=True, timeout=300, check=False)


def report(name: str, text: str) -> None:
    """Keep a table for the record (results/) and show it in the test's output."""
    print(f"\n{name}:\n{text}")
    out = Path(os.environ.get("HOSTAGENT_RESULTS", "/tmp")) / f"{name}.txt"
    out.write_text(text)


def preflight(portals: list[str], *, name: str | None = None) -> tuple[int, dict[str, str]]:
    answer = cli("preflight", "--json", *(a for p in portals for a in ("--portal", p)))
    doc = json.loads(answer.stdout)
    assert answer.returncode == {"pass": 0, "warn": 1, "fail": 2}[doc["status"]], answer.stderr
    if name:  # the table hostagent-cli prints, made from the same answer
        report(name, checks_table([Check(c["id"], Status(c["status"]), c["detail"], c["remedy"])
                                   for c in doc["checks"]]))
    failing = {c["id"]: c for c in doc["checks"] if c["status"] != "pass"}
    for check in failing.values():
        assert check["remedy"], check
    return answer.returncode, {i: f"{c['status']}: {c['remedy']}" for i, c in failing.items()}


@pytest.fixture
def stanzas(guest: guest_mod.Guest) -> Iterator[None]:
    """hostagent's vendor settings installed for the test, the test bed's own after it."""
    installed = cli("multipath", "install")
    assert installed.returncode == 0, installed.stderr
    assert "multipathd reconfigured" in installed.stdout, installed.stdout
    yield
    for stanza in {s.file for s in load_stanzas()}:
        (CONF_DIR / stanza).unlink(missing_ok=True)
    guest_mod.set_find_multipaths("no")


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


def multipath_ll(wwid: str) -> str:
    return run(["multipath", "-ll", wwid]).stdout


def test_the_stanzas_shape_each_vendors_map(stanzas: None, array: IscsiArray) -> None:
    host = native_host()
    datera, k2 = array.export_datera(), array.export_k2()
    devices = [asyncio.run(host.attach(e)) for e in (datera, k2)]
    try:
        shown = {e.wwid: multipath_ll(e.wwid) for e in (datera, k2)}
    finally:
        for export, device in zip((datera, k2), devices, strict=True):
            asyncio.run(host.detach(export, device))
    report("multipath-ll", "\n".join(shown.values()))
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
