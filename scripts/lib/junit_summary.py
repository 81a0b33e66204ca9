"""Print the closing lines for the tiers that ran, from their junit XML files: the
counts, and after a kernel run where its time went (the ten slowest tests, the
guest's CPU by command from scripts/lib/guestcpu.py, and the Python processes the
tests started, from tests/kernel/pystarts.py's ledger)."""

import statistics
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

SLOWEST = 10


def suites(path: Path) -> list[ET.Element]:
    root = ET.parse(path).getroot()
    return [root] if root.tag == "testsuite" else list(root.iter("testsuite"))


def counts(path: Path) -> tuple[int, int, int]:
    found = suites(path)
    total = sum(int(s.get("tests", 0)) for s in found)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in found)
    skipped = sum(int(s.get("skipped", 0)) for s in found)
    return total - failed - skipped, failed, skipped


def slowest(path: Path) -> list[str]:
    cases = [(float(c.get("time", 0)), f"{c.get('classname', '')}::{c.get('name', '')}")
             for s in suites(path) for c in s.iter("testcase")]
    total = sum(t for t, _ in cases)
    lines = [f"kernel tier: {total:.0f} s in {len(cases)} tests; the {SLOWEST} slowest:"]
    lines += [f"  {t:6.1f} s  {name.removeprefix('tests.kernel.')}"
              for t, name in sorted(cases, reverse=True)[:SLOWEST]]
    return lines


def starts(ledger: Path) -> list[str]:
    """kind<TAB>seconds<TAB>test lines: how many starts of each kind, and their cost."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    for line in ledger.read_text().splitlines():
        kind, seconds, _ = line.split("\t", 2)
        by_kind[kind].append(float(seconds))
    return [f"  {kind:6} {len(s):4} starts, {sum(s):6.0f} s in all, "
            f"median {statistics.median(s):.1f} s" for kind, s in sorted(by_kind.items())]


def main() -> None:
    results, tier, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    tiers = ["unit", "kernel"] if tier == "all" else [tier]
    passed = failed = skipped = 0
    for name in tiers:
        xml = results / f"{name}-junit.xml"
        if not xml.exists():
            print(f"{name} tier: no results ({xml} missing)")
            failed += 1
            continue
        if name == "kernel":
            print("\n".join(slowest(xml)))
            cpu = results / "kernel-cpu.txt"  # scripts/lib/guestcpu.py's report
            if cpu.exists():
                print(cpu.read_text().rstrip())
            ledger = results / "kernel-starts.tsv"
            if ledger.exists():
                print("Python processes the kernel tests started "
                      "(an agent's time runs until its socket answers):")
                print("\n".join(starts(ledger)))
        p, f, s = counts(xml)
        print(f"{name} tier: {p} passed, {f} failed, {s} skipped")
        passed, failed, skipped = passed + p, failed + f, skipped + s
    print(f"{tier} ({seconds} s):")
    print(f"total: {passed} passed, {failed} failed, {skipped} skipped")


if __name__ == "__main__":
    main()
