"""Processes as /proc shows them."""

from __future__ import annotations

from hostagent.host.fs import PROC, HostFS


def supplementary_groups(fs: HostFS, pid: int) -> frozenset[int]:
    """The groups of a process beyond its primary one; none if it is gone."""
    for line in (fs.try_read(f"{PROC}/{pid}/status") or "").splitlines():
        if line.startswith("Groups:"):
            return frozenset(int(g) for g in line.split()[1:])
    return frozenset()


def openers(fs: HostFS, dev_path: str) -> list[int]:
    """The processes that hold `dev_path` open (a file descriptor on it)."""
    target = fs.realpath(dev_path)
    pids = set()
    for fd in fs.glob(f"{PROC}/[0-9]*/fd/*"):
        try:
            if fs.realpath(fd) == target:
                pids.add(int(fd.split("/")[2]))
        except (OSError, ValueError):
            continue  # a process or descriptor gone meanwhile
    return sorted(pids)


def mount_points(fs: HostFS, devno: str) -> list[str]:
    """Where the block device `devno` ("major:minor") is mounted."""
    points = []
    for line in (fs.try_read(f"{PROC}/self/mountinfo") or "").splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[2] == devno:
            points.append(fields[4])
    return points
