"""Fibre Channel in sysfs: local ports (HBAs) and the remote ports they see.

Layout (Linux 6.1, software FCoE in the guest; real HBAs use the same classes):
  /sys/class/fc_host/hostH -> .../hostH/fc_host/hostH
    port_name, node_name ("0x" + 16 hex digits), port_state (Online, Linkdown, ...)
  /sys/class/fc_remote_ports/rport-H:C-N -> .../hostH/rport-H:C-N/fc_remote_ports/rport-H:C-N
    port_name, node_name, roles ("FCP Target", "FCP Initiator", ...), port_state
    (Online, Blocked, Not Present, Marginal), scsi_target_id (-1: not a SCSI target)
The rport's name carries the SCSI host H and channel C; with scsi_target_id it
gives the C T of the targeted scan written to /sys/class/scsi_host/hostH/scan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hostagent.host.fs import SYS_CLASS, HostFS

FC_HOST = f"{SYS_CLASS}/fc_host"
FC_REMOTE_PORTS = f"{SYS_CLASS}/fc_remote_ports"
ONLINE = "Online"
FCP_TARGET = "FCP Target"
_RPORT_NAME = re.compile(r"rport-(\d+):(\d+)-(\d+)")

# os-brick's addressing modes: how the array numbers a LUN id the controller sent.
FLAT_SPACE = 0x4000  # SAM-2 flat space addressing method (01b) in the LUN's first byte


@dataclass(frozen=True)
class FcHba:
    host: int  # the SCSI host number: /sys/class/scsi_host/host<host>
    port_name: str  # WWPN, 16 lowercase hex digits
    node_name: str  # WWNN, same form
    port_state: str

    @property
    def online(self) -> bool:
        return self.port_state == ONLINE


@dataclass(frozen=True)
class RemotePort:
    name: str  # rport-H:C-N
    host: int
    channel: int
    port_name: str
    port_state: str
    roles: tuple[str, ...]
    target_id: int | None  # None: the kernel gave this port no SCSI target id

    @property
    def online(self) -> bool:
        return self.port_state == ONLINE

    @property
    def is_target(self) -> bool:
        return FCP_TARGET in self.roles


def wwn(raw: str | None) -> str:
    """sysfs '0x2000020000000a01' -> '2000020000000a01' (the form FcVolume uses)."""
    return (raw or "").strip().lower().removeprefix("0x")


def hbas(fs: HostFS) -> list[FcHba]:
    """Every local FC port, online or not, in host-number order."""
    found = []
    for name in fs.listdir(FC_HOST):
        if not name.startswith("host") or not name[4:].isdigit():
            continue
        base = f"{FC_HOST}/{name}"
        port_name = wwn(fs.try_read(f"{base}/port_name"))
        if not port_name:
            continue  # a port being torn down
        found.append(FcHba(int(name[4:]), port_name, wwn(fs.try_read(f"{base}/node_name")),
                           fs.try_read(f"{base}/port_state") or "Unknown"))
    return sorted(found, key=lambda h: h.host)


def remote_ports(fs: HostFS, host: int | None = None) -> list[RemotePort]:
    """Remote ports seen by every local port, or by SCSI host `host` only."""
    found = []
    for name in fs.listdir(FC_REMOTE_PORTS):
        m = _RPORT_NAME.fullmatch(name)
        if m is None or (host is not None and int(m[1]) != host):
            continue
        base = f"{FC_REMOTE_PORTS}/{name}"
        port_name = wwn(fs.try_read(f"{base}/port_name"))
        if not port_name:
            continue
        target_id = int(fs.try_read(f"{base}/scsi_target_id") or -1)
        roles = tuple(r.strip() for r in (fs.try_read(f"{base}/roles") or "").split(","))
        found.append(RemotePort(name, int(m[1]), int(m[2]), port_name,
                                fs.try_read(f"{base}/port_state") or "Unknown",
                                tuple(r for r in roles if r),
                                target_id if target_id >= 0 else None))
    return sorted(found, key=lambda p: (p.host, p.channel, int(p.name.rsplit("-", 1)[1])))


def kernel_lun(lun: int, addressing_mode: str | None) -> int:
    """The LUN number Linux uses for the array's LUN id (os-brick's lun_for_addressing).

    Linux numbers a LUN by its 8-byte address, so an array that uses flat space
    addressing has its LUN 256 at Linux LUN 0x4100. SAM2: peripheral addressing
    below 256, flat above; SAM3-flat: flat always; SAM, transparent: as given.
    """
    if addressing_mode == "SAM3-flat" or (addressing_mode == "SAM2" and lun >= 256):
        return lun + FLAT_SPACE
    return lun
