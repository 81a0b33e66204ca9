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


def test_junit_summary_names_the_slowest_kernel_tests_and_counts_the_starts(
        tmp_path: Path) -> None:
    cases = "".join(f'<testcase classname="tests.kernel.test_m" name="t{i}" time="{i}.0"/>'
                    for i in range(1, 13))
    (tmp_path / "kernel-junit.xml").write_text(
        f'<testsuites><testsuite tests="12" failures="0" errors="0" skipped="0">{cases}'
        "</testsuite></testsuites>")
    (tmp_path / "kernel-starts.tsv").write_text(
        "agent\t7.00\ttests/kernel/test_m.py::t1\nagent\t9.00\tx\ncli\t1.50\ty\n")
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts/lib/junit_summary.py"), str(tmp_path), "kernel",
         "9"], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "kernel tier: 78 s in 12 tests; the 10 slowest:"
    assert out[1].split() == ["12.0", "s", "test_m::t12"]
    assert out[10].split() == ["3.0", "s", "test_m::t3"]
    assert "  agent     2 starts,     16 s in all, median 8.0 s" in out
    assert "  cli       1 starts,      2 s in all, median 1.5 s" in out


def test_process_accounting_records_are_read_by_command(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts/lib"))
    try:
        import guestcpu
    finally:
        sys.path.remove(str(REPO / "scripts/lib"))
    tick = guestcpu.TICK
    # comp_t: 13-bit mantissa, base-8 exponent (8191 << 3 = 65528 ticks).
    assert guestcpu.comp_t(0x1FFF | (1 << 13)) == 8191 * 8

    def record(comm: bytes, utime: int, stime: int, version: int = 3) -> bytes:
        return guestcpu.ACCT_V3.pack(0, version, 0, 0, 0, 0, 1, 1, 0, 0.0, utime, stime,
                                     0, 0, 0, 0, 0, 0, comm)

    (tmp_path / "acct").write_bytes(record(b"iscsiadm", tick, tick) + record(b"iscsiadm", tick, 0)
                                    + record(b"udevadm", 2 * tick, 0)
                                    + record(b"other", 9 * tick, 0, version=2))
    seconds, count = guestcpu.exited(tmp_path / "acct")
    assert dict(seconds) == {"iscsiadm": 3.0, "udevadm": 2.0}
    assert dict(count) == {"iscsiadm": 2, "udevadm": 1}
