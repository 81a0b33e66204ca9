"""Host-side tests of the test bed's pure parts (the rest runs in the guest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.kernel.testbed.fcoe import FcLink
from tests.kernel.testbed.lio import naa_wwid

REPO = Path(__file__).resolve().parents[2]


def test_naa_wwid_follows_lio_designator() -> None:
    # LIO: NAA 6, company id 001405, then the first 25 hex digits of the unit
    # serial, dashes skipped; multipath prefixes the designator type '3'.
    serial = "7deaf3a3-ea12-746d-9b2c-0123456789ab"
    assert naa_wwid(serial) == "36001405" + "7deaf3a3ea12746d9b2c01234"
    assert len(naa_wwid(serial)) == 33


def test_fcoe_wwpn_is_2000_and_the_mac() -> None:
    link = FcLink("fcA1", "fcB1", "02:00:00:00:0a:01", "02:00:00:00:0b:01")
    assert link.initiator_wwpn == "2000020000000a01"
    assert link.target_wwpn == "2000020000000b01"


def _summary(tmp_path: Path, xml: str) -> str:
    (tmp_path / "unit-junit.xml").write_text(xml)
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/lib/junit_summary.py"), str(tmp_path), "unit", "3"],
        capture_output=True, text=True, check=True,
    )
    return proc.stdout


def test_junit_summary_counts_errors_as_failures(tmp_path: Path) -> None:
    out = _summary(tmp_path, '<testsuites><testsuite tests="9" failures="1" errors="2" '
                             'skipped="1"/></testsuites>')
    assert out.splitlines()[-1] == "total: 5 passed, 3 failed, 1 skipped"


def test_junit_summary_reports_a_missing_tier_as_failed(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/lib/junit_summary.py"), str(tmp_path), "all", "1"],
        capture_output=True, text=True, check=True,
    )
    assert "unit tier: no results" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "total: 0 passed, 2 failed, 0 skipped"
