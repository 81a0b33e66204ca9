"""Print one closing line for the tiers that ran, from their junit XML files."""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def counts(path: Path) -> tuple[int, int, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return total - failed - skipped, failed, skipped


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
        p, f, s = counts(xml)
        print(f"{name} tier: {p} passed, {f} failed, {s} skipped")
        passed, failed, skipped = passed + p, failed + f, skipped + s
    print(f"{tier} ({seconds} s):")
    print(f"total: {passed} passed, {failed} failed, {skipped} skipped")


if __name__ == "__main__":
    main()
