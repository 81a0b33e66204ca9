"""Read-only views of the initiator side, for assertions in kernel tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .sh import run


def sessions() -> list[tuple[str, str]]:
    """(portal 'ip:port', target iqn) of each iSCSI session."""
    out = run(["iscsiadm", "-m", "session"], ok=(0, 21)).stdout
    result = []
    for line in out.splitlines():
        # tcp: [1] 127.0.0.1:3260,1 iqn.2013-05.com.daterainc:tc:01:sn:... (non-flash)
        fields = line.split()
        if len(fields) >= 4:
            result.append((fields[2].split(",")[0], fields[3]))
    return result


def node_records() -> list[str]:
    out = run(["iscsiadm", "-m", "node"], ok=(0, 21)).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def scsi_disks() -> dict[str, str]:
    """sdX -> H:C:T:L for every SCSI disk."""
    disks = {}
    for dev in Path("/sys/class/scsi_disk").glob("*"):
        for block in (dev / "device" / "block").glob("sd*"):
            disks[block.name] = dev.name
    return disks


def wwid(sd: str) -> str:
    """The WWID multipath uses for sdX: '3' + the NAA designator in sysfs."""
    raw = Path(f"/sys/block/{sd}/device/wwid").read_text().strip()
    assert raw.startswith("naa."), f"{sd} has no NAA wwid: {raw}"
    return "3" + raw[4:]


def vendor_model(sd: str) -> tuple[str, str]:
    dev = Path(f"/sys/block/{sd}/device")
    return (dev / "vendor").read_text().strip(), (dev / "model").read_text().strip()


@dataclass(frozen=True)
class MpPath:
    dev: str
    dm_state: str  # active / failed
    checker: str   # ready / faulty / ...


@dataclass(frozen=True)
class MpMap:
    wwid: str
    dm: str
    vendor_product: str
    paths: tuple[MpPath, ...]

    @property
    def active(self) -> int:
        return sum(p.dm_state == "active" and p.checker == "ready" for p in self.paths)


def maps() -> dict[str, MpMap]:
    """Multipath maps by WWID, with their paths, as multipathd sees them now."""
    out = run(["multipathd", "show", "maps", "raw", "format", "%w %d %s"]).stdout
    paths: dict[str, list[MpPath]] = {}
    pout = run(["multipathd", "show", "paths", "raw", "format", "%w %d %t %T"]).stdout
    for line in pout.splitlines():
        fields = line.split()
        if len(fields) == 4:
            paths.setdefault(fields[0], []).append(MpPath(fields[1], fields[2], fields[3]))
    result = {}
    for line in out.splitlines():
        fields = line.split(None, 2)
        if len(fields) == 3 and fields[1].startswith("dm-"):
            result[fields[0]] = MpMap(fields[0], fields[1], fields[2].strip(),
                                      tuple(paths.get(fields[0], ())))
    return result
