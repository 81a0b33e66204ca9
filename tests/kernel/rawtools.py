"""Raw-tool sequences that prove the test bed, and kernel-state checks the tests share."""

from __future__ import annotations

import os
from pathlib import Path

from hostagent.models import Device
from tests.kernel.testbed import probe
from tests.kernel.testbed.lio import Chap
from tests.kernel.testbed.sh import CommandError, run, wait_until


def node_args(iqn: str, portal: str) -> list[str]:
    return ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal]


def new_node(iqn: str, portal: str, chap: Chap | None = None) -> None:
    run([*node_args(iqn, portal), "-o", "new"])
    if chap is not None:
        set_chap(iqn, portal, chap)


def set_chap(iqn: str, portal: str, chap: Chap) -> None:
    settings = {"node.session.auth.authmethod": "CHAP",
                "node.session.auth.username": chap.username,
                "node.session.auth.password": chap.password}
    if chap.username_in and chap.password_in:
        settings["node.session.auth.username_in"] = chap.username_in
        settings["node.session.auth.password_in"] = chap.password_in
    for name, value in settings.items():
        run([*node_args(iqn, portal), "-o", "update", "-n", name, "-v", value])


def login(iqn: str, portal: str, ok: tuple[int, ...] = (0,)) -> int:
    return run([*node_args(iqn, portal), "--login"], ok=ok, timeout=90).returncode


def discover(portal: str, chap: Chap | None = None, ok: tuple[int, ...] = (0,)) -> int:
    base = ["iscsiadm", "-m", "discoverydb", "-t", "sendtargets", "-p", portal]
    run([*base, "-o", "new"])
    if chap is not None:
        for name, value in (("discovery.sendtargets.auth.authmethod", "CHAP"),
                            ("discovery.sendtargets.auth.username", chap.username),
                            ("discovery.sendtargets.auth.password", chap.password)):
            run([*base, "-o", "update", "-n", name, "-v", value])
    return run([*base, "--discover"], ok=ok, timeout=60).returncode


def delete_discovery(portal: str) -> None:
    run(["iscsiadm", "-m", "discoverydb", "-t", "sendtargets", "-p", portal, "-o", "delete"],
        ok=(0, 21))


def disks_with_wwid(wwid: str) -> list[str]:
    found = []
    for sd in probe.scsi_disks():
        try:
            if probe.wwid(sd) == wwid:
                found.append(sd)
        except (OSError, AssertionError):
            continue  # a disk still being set up or going away
    return sorted(found)


def wait_disks(wwid: str, count: int, timeout: float = 60) -> list[str]:
    return wait_until(lambda: d if len(d := disks_with_wwid(wwid)) == count else None,
                      timeout=timeout, what=f"{count} disk(s) with WWID {wwid}")


def wait_map(wwid: str, active: int, timeout: float = 60) -> probe.MpMap:
    def ready() -> probe.MpMap | None:
        m = probe.maps().get(wwid)
        return m if m and m.active == active and len(m.paths) == active else None
    return wait_until(ready, timeout=timeout, what=f"map {wwid} with {active} active path(s)")


def assert_map(device: Device, wwid: str, paths: int) -> None:
    """The device is a multipath map of `paths` paths, in the kernel and in multipathd."""
    assert device.multipath and device.path.startswith("/dev/dm-")
    assert device.wwn == wwid
    assert len(device.paths) == paths
    dm = device.path[5:]
    # The kernel's table is what the connector promises; multipathd's checker may
    # not yet have taken a path that was just added (it polls), so that is awaited.
    assert sorted(os.listdir(f"/sys/block/{dm}/slaves")) == sorted(p.device for p in device.paths)
    mp = wait_map(wwid, paths, timeout=30)
    assert mp.dm == dm
    assert sorted(p.dev for p in mp.paths) == sorted(p.device for p in device.paths)


def remove_map(wwid: str) -> None:
    """Flush the map, waiting out udev's brief opens of it.

    A reinstated path reloads the map's table; the change event that follows has
    udev's blkid hold the map open for a moment, and `multipath -f` then refuses
    it as "map in use" (seen in CI right after a blocked portal came back).
    """
    def flushed() -> bool:
        run(["udevadm", "settle", "--timeout=30"], timeout=40)
        proc = run(["multipath", "-f", wwid], ok=(0, 1), timeout=60)
        if proc.returncode == 0:
            return True
        if "map in use" not in proc.stderr:
            raise CommandError(f"multipath -f {wwid} -> rc 1\nstderr: {proc.stderr.strip()}")
        return False
    wait_until(flushed, timeout=30, interval=1, what=f"map {wwid} to be free to flush")


def delete_disks(disks: list[str]) -> None:
    for sd in disks:
        Path(f"/sys/block/{sd}/device/delete").write_text("1")
    wait_until(lambda: not any(Path(f"/sys/block/{sd}").exists() for sd in disks),
               timeout=30, what=f"{disks} to go away")


def logout_all(iqn: str) -> None:
    run(["iscsiadm", "-m", "node", "-T", iqn, "--logout"], ok=(0, 21), timeout=60)
    run(["iscsiadm", "-m", "node", "-T", iqn, "-o", "delete"], ok=(0, 21))
