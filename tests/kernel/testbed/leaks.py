"""What a kernel test must not leave behind, and how to sweep it up if it did."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, fields
from pathlib import Path

from . import probe
from .sh import run

CONFIGFS = Path("/sys/kernel/config/target")


@dataclass(frozen=True)
class Snapshot:
    sessions: frozenset[str]
    node_records: frozenset[str]
    scsi_devices: frozenset[str]  # H:C:T:L: sd disks, FC LUNs, any SCSI device
    block_devices: frozenset[str]  # sd* and dm-*
    lio_objects: frozenset[str]  # backstores, iSCSI targets, tcm_fc LUNs
    loop_devices: frozenset[str]


def _lio_objects() -> set[str]:
    objects = {str(p.relative_to(CONFIGFS)) for p in CONFIGFS.glob("core/*/*") if p.is_dir()
               and p.parent.name != "alua"}
    objects |= {str(p.relative_to(CONFIGFS)) for p in CONFIGFS.glob("iscsi/iqn.*")}
    # tcm_fc target ports belong to the session-wide FC fabric; their LUNs do not.
    objects |= {str(p.relative_to(CONFIGFS)) for p in CONFIGFS.glob("fc/*/tpgt_*/lun/lun_*")}
    return objects


def snapshot() -> Snapshot:
    loops = run(["losetup", "--noheadings", "--output", "NAME"]).stdout.split()
    return Snapshot(
        sessions=frozenset(f"{portal} {iqn}" for portal, iqn in probe.sessions()),
        node_records=frozenset(probe.node_records()),
        scsi_devices=frozenset(p.name for p in Path("/sys/class/scsi_device").glob("*")),
        block_devices=frozenset(p.name for p in Path("/sys/block").glob("*")
                                if p.name.startswith(("sd", "dm-"))),
        lio_objects=frozenset(_lio_objects()),
        loop_devices=frozenset(loops),
    )


def find(baseline: Snapshot) -> list[str]:
    """One line per kind of object present now that was not in `baseline`."""
    now = snapshot()
    found = []
    for f in fields(Snapshot):
        extra = getattr(now, f.name) - getattr(baseline, f.name)
        if extra:
            found.append(f"{f.name.replace('_', ' ')}: {', '.join(sorted(extra))}")
    return found


def cleanup(baseline: Snapshot) -> None:
    """Remove everything `find` would report, initiator side first."""
    now = snapshot()
    for dm in sorted(now.block_devices - baseline.block_devices):
        if dm.startswith("dm-"):
            name = Path(f"/sys/block/{dm}/dm/name").read_text().strip()
            run(["dmsetup", "remove", "--force", name], ok=(0, 1), timeout=30)
    if now.sessions - baseline.sessions:
        run(["iscsiadm", "-m", "node", "--logoutall=all"], ok=(0, 21), timeout=60)
    if now.node_records - baseline.node_records:
        run(["iscsiadm", "-m", "node", "-o", "delete"], ok=(0, 21), timeout=30)
    shutil.rmtree("/etc/iscsi/send_targets", ignore_errors=True)
    for hctl in sorted(snapshot().scsi_devices - baseline.scsi_devices):
        delete = Path(f"/sys/class/scsi_device/{hctl}/device/delete")
        if delete.exists():
            delete.write_text("1")
    _cleanup_lio()
    for loop in sorted(snapshot().loop_devices - baseline.loop_devices):
        run(["losetup", "-d", loop], ok=(0, 1))


def _cleanup_lio() -> None:
    from rtslib_fb import RTSRoot

    root = RTSRoot()
    for target in root.targets:
        if target.fabric_module.name == "iscsi":
            target.delete()
        else:
            for tpg in target.tpgs:
                for lun in tpg.luns:
                    lun.delete()
    for so in root.storage_objects:
        so.delete()
