"""The disk step of a path repair, shared by the native engines' repair():
the LUN's disk at an H:C:T:L made or re-identified, proved to be the
volume's, and put back in the map."""

from __future__ import annotations

from hostagent.connectors.base import PathRepair, RepairKind
from hostagent.connectors.devices import Devices, set_read_only_off_loop
from hostagent.errors import LunNotFound, WwnMismatch
from hostagent.host import scsi
from hostagent.host.fs import HostFS
from hostagent.models import Device, PathInfo


async def restore_disk(devices: Devices, fs: HostFS, device: Device, repair: PathRepair,
                       hctl: str | None) -> PathInfo:
    if hctl is None:
        raise LunNotFound(f"{repair.label}: nothing to scan the LUN through")
    if repair.kind == RepairKind.READD and repair.device:
        await devices.rescan(hctl)  # re-read the identity before trusting it
        sd, created = repair.device, False
    else:  # a disk at hctl nobody holds is deleted and scanned anew by scan()
        sd, created = await devices.scan(hctl, lambda: LunNotFound(
            f"{repair.label}: the target has no LUN at {hctl}", hctl=hctl))
    wwid = scsi.wwid(fs, hctl)
    if wwid != device.wwn:
        if created:
            await devices.delete_disks([PathInfo(sd, hctl)], wwid or "")
        raise WwnMismatch(f"{sd} ({hctl}) reports {wwid}, not the volume's {device.wwn}",
                          hctl=hctl, wwid=wwid)
    if device.read_only:
        await set_read_only_off_loop(fs, [sd], deadline=devices.device_timeout)
    if device.multipath:
        await devices.build_map(device.wwn, [sd])
    return PathInfo(sd, hctl, None, repair.target)
