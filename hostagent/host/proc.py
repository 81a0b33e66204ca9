"""Processes as /proc shows them."""

from __future__ import annotations

from hostagent.host.fs import PROC, HostFS


def supplementary_groups(fs: HostFS, pid: int) -> frozenset[int]:
    """The groups of a process beyond its primary one; none if it is gone."""
    for line in (fs.try_read(f"{PROC}/{pid}/status") or "").splitlines():
        if line.startswith("Groups:"):
            return frozenset(int(g) for g in line.split()[1:])
    return frozenset()
