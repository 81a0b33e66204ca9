"""Where the guest's CPU went during a kernel run, run INSIDE the guest by
scripts/lib/guest-pytest: the kernel's BSD process accounting for every process
that exited (each iscsiadm, multipath, udev helper, agent and CLI), /proc for the
ones still running, and /proc/stat for the share the CPUs sat idle (waiting on
timers and timeouts rather than working).

Usage: guestcpu.py start DIR | guestcpu.py report DIR
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from collections import defaultdict
from pathlib import Path

# struct acct_v3 (linux/acct.h): flag, version, tty, exitcode, uid, gid, pid, ppid,
# btime, etime (float), then utime, stime and six more comp_t, then comm[16].
ACCT_V3 = struct.Struct("=BBHIIIIIIf8H16s")
TICK = os.sysconf("SC_CLK_TCK")
TOP = 15


def comp_t(value: int) -> int:
    """A comp_t: a 13-bit mantissa and a 3-bit base-8 exponent."""
    return (value & 0x1FFF) << (3 * (value >> 13))


def cpu_totals() -> list[int]:
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def start(out: Path) -> None:
    (out / "cpu-start").write_text(" ".join(map(str, cpu_totals())))
    libc = ctypes.CDLL(None, use_errno=True)
    acct_file = out / "acct"
    acct_file.write_bytes(b"")
    if libc.acct(str(acct_file).encode()) != 0:
        print(f"note: process accounting is off ({os.strerror(ctypes.get_errno())})",
              file=sys.stderr)


def exited(acct_file: Path) -> tuple[dict[str, float], dict[str, int]]:
    seconds: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    data = acct_file.read_bytes()
    for offset in range(0, len(data) - ACCT_V3.size + 1, ACCT_V3.size):
        fields = ACCT_V3.unpack_from(data, offset)
        if fields[1] != 3:  # not a v3 record: the layout above does not apply
            continue
        comm = fields[18].split(b"\0", 1)[0].decode(errors="replace")
        seconds[comm] += (comp_t(fields[10]) + comp_t(fields[11])) / TICK
        count[comm] += 1
    return seconds, count


def running() -> dict[str, float]:
    """CPU of the processes and kernel threads alive now, by name."""
    seconds: dict[str, float] = defaultdict(float)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        seconds[name.split("/")[0]] += (int(fields[11]) + int(fields[12])) / TICK
    return seconds


def report(out: Path) -> None:
    libc = ctypes.CDLL(None)
    libc.acct(None)
    before = [int(v) for v in (out / "cpu-start").read_text().split()]
    delta = [a - b for a, b in zip(cpu_totals(), before, strict=False)]
    total = sum(delta) or 1
    idle = delta[3] + delta[4]  # idle, iowait
    gone, count = exited(out / "acct")
    alive = running()
    names = set(gone) | set(alive)
    rows = sorted(((gone.get(n, 0.0) + alive.get(n, 0.0), n) for n in names), reverse=True)
    print(f"guest CPU during the run: {total / TICK:.0f} CPU-s, {100 * idle / total:.0f}% idle "
          f"(waiting), {100 * (total - idle) / total:.0f}% busy; "
          f"{sum(count.values())} processes exited; by command (CPU-s, processes):")
    for seconds, name in rows[:TOP]:
        print(f"  {seconds:7.1f}  {count.get(name, 0):6}  {name}")


def main() -> int:
    action, out = sys.argv[1], Path(sys.argv[2])
    {"start": start, "report": report}[action](out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
