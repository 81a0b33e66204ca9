"""SCSI and iSCSI state in sysfs: sessions -> hosts -> H:C:T:L -> sd, scan, delete.

Layout (Linux 6.1, seen in the guest):
  /sys/class/iscsi_session/sessionN -> /sys/devices/platform/hostH/sessionN/iscsi_session/sessionN
    targetname, tpgt, ifacename, state, target_id
  /sys/class/iscsi_connection/connectionN:0/persistent_address, persistent_port
  /sys/class/scsi_host/hostH/scan        write "C T L" (synchronous scan of that LUN)
  /sys/class/scsi_device/H:C:T:L/device/{block/sdX, state, delete, rescan, wwid}
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from hostagent.host.fs import SYS_BLOCK, SYS_CLASS, HostFS
from hostagent.models import Portal

_SESSION_HOST = re.compile(r"/host(\d+)/session(\d+)/iscsi_session/")
_HCTL = re.compile(r"\d+:\d+:\d+:\d+")
LOGGED_IN = "LOGGED_IN"  # iscsi_session/state of a session that carries I/O


@dataclass(frozen=True)
class IscsiSession:
    sid: int
    host: int  # the SCSI host number the session created
    iqn: str
    portal: Portal
    iface: str
    state: str  # LOGGED_IN, FAILED, FREE
    target_id: int


def iscsi_sessions(fs: HostFS, iqn: str | None = None) -> list[IscsiSession]:
    """Every session, or those of target `iqn`: the others' attributes are not read
    (each sysfs read costs, and a busy host has many sessions)."""
    sessions = []
    for name in fs.listdir(f"{SYS_CLASS}/iscsi_session"):
        base = f"{SYS_CLASS}/iscsi_session/{name}"
        target = fs.try_read(f"{base}/targetname")
        if iqn is not None and target != iqn:
            continue
        try:  # sysfs's class links are relative: ../../devices/platform/hostH/sessionN/...
            m = _SESSION_HOST.search(fs.readlink(base) + "/")
        except OSError:
            continue  # a session being torn down
        conn = f"{SYS_CLASS}/iscsi_connection/connection{name[7:]}:0"
        address = fs.try_read(f"{conn}/persistent_address")
        port = fs.try_read(f"{conn}/persistent_port")
        if not (m and target and address and port):
            continue  # a session being torn down
        sessions.append(IscsiSession(
            sid=int(m[2]), host=int(m[1]), iqn=target, portal=Portal(address, int(port)),
            iface=fs.try_read(f"{base}/ifacename") or "default",
            state=fs.try_read(f"{base}/state") or "UNKNOWN",
            target_id=int(fs.try_read(f"{base}/target_id") or 0)))
    return sessions


def connection_state(fs: HostFS, sid: int) -> str | None:
    """The state of a session's connection (up, down, failed, bound), where the
    kernel shows it (5.x and later)."""
    return fs.try_read(f"{SYS_CLASS}/iscsi_connection/connection{sid}:0/state")


def scan_lun(fs: HostFS, host: int, channel: int, target_id: int, lun: int) -> None:
    """Scan exactly one LUN: never the '- - -' wildcard that probes the whole bus."""
    fs.write(f"{SYS_CLASS}/scsi_host/host{host}/scan", f"{channel} {target_id} {lun}")


def hctl_of_disk(fs: HostFS, sd: str) -> str | None:
    """H:C:T:L of an sd block device (/sys/block/sdX/device links to it)."""
    path = f"{SYS_BLOCK}/{sd}/device"
    if not fs.exists(path):
        return None
    return fs.realpath(path).rsplit("/", 1)[-1]


def devices_on_host(fs: HostFS, host: int) -> list[str]:
    """H:C:T:L of every SCSI device on a host."""
    return [d for d in fs.listdir(f"{SYS_CLASS}/scsi_device") if d.split(":")[0] == str(host)]


def disk_of(fs: HostFS, hctl: str) -> str | None:
    """The sd block device of a SCSI device, once the sd driver has bound it."""
    blocks = fs.listdir(f"{SYS_CLASS}/scsi_device/{hctl}/device/block")
    return blocks[0] if blocks else None


def disks_by_hctl(fs: HostFS, block_names: Iterable[str]) -> dict[str, str]:
    """H:C:T:L -> sd of the SCSI disks among /sys/block's names, one readlink each:
    /sys/block/sdX links to ../devices/.../H:C:T:L/block/sdX (cheaper than listing
    each device's block/)."""
    found = {}
    for name in block_names:
        if not name.startswith("sd"):
            continue
        try:
            parts = fs.readlink(f"{SYS_BLOCK}/{name}").split("/")
        except OSError:
            continue  # going away
        if len(parts) >= 3 and parts[-2] == "block" and _HCTL.fullmatch(parts[-3]):
            found[parts[-3]] = name
    return found


def device_state(fs: HostFS, hctl: str) -> str | None:
    return fs.try_read(f"{SYS_CLASS}/scsi_device/{hctl}/device/state")


def wwid(fs: HostFS, hctl: str) -> str | None:
    """The WWID multipath derives (scsi_id's ID_SERIAL) from VPD page 0x83.

    sysfs gives the best designator as 'naa.<hex>' or 'eui.<hex>'; udev's
    scsi_id prefixes the designator type: 3 for NAA, 2 for EUI-64.
    """
    raw = fs.try_read(f"{SYS_CLASS}/scsi_device/{hctl}/device/wwid")
    if raw is None:
        return None
    kind, _, value = raw.partition(".")
    prefix = {"naa": "3", "eui": "2"}.get(kind)
    return prefix + value.lower() if prefix and value else None


def delete_device(fs: HostFS, hctl: str) -> None:
    path = f"{SYS_CLASS}/scsi_device/{hctl}/device/delete"
    if fs.exists(path):
        fs.write(path, "1")


def rescan_device(fs: HostFS, hctl: str) -> None:
    fs.write(f"{SYS_CLASS}/scsi_device/{hctl}/device/rescan", "1")


def holders(fs: HostFS, block: str) -> list[str]:
    return fs.listdir(f"{SYS_CLASS}/block/{block}/holders")


def size_bytes(fs: HostFS, block: str) -> int:
    sectors = fs.try_read(f"{SYS_CLASS}/block/{block}/size")
    return int(sectors) * 512 if sectors else 0
