"""A Fibre Channel host on the fake kernel: the FC connector wired to the fakes.

The FC engine runs no host process, so its FakeExecutor is never told to
expect anything: any command it ran would fail the test.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from hostagent.connectors.fc import FcConnector, FcOptions
from hostagent.models import Device, FcVolume, VolumeSpec
from tests.unit.fakehost import FakeHostFS, FakeKernel, FakeMultipathd, FakeUdev
from tests.unit.fakes import FakeExecutor

# Initiator (HBA) and target port names, as the guest's FCoE links spell them.
I1, I2, I3 = "2000020000000a01", "2000020000000a02", "2000020000000a03"
T1, T2, T3 = "2000020000000b01", "2000020000000b02", "2000020000000b03"
WWID = "36001405" + "0123456789abcdef012345678"
OTHER = WWID[:-1] + "9"


class Host:
    def __init__(self, tmp_path: Path, options: FcOptions | None = None) -> None:
        self.kernel = FakeKernel(tmp_path)
        self.fs = FakeHostFS(self.kernel)
        self.executor = FakeExecutor()
        self.mpd = FakeMultipathd(self.kernel)
        self.udev = FakeUdev(self.kernel)
        self.connector = FcConnector(self.executor, self.fs, self.udev, self.mpd,
                                     options=options)

    def hba(self, wwpn: str, *targets: str, state: str = "Online") -> int:
        """An HBA that sees `targets` as online FCP target ports; its host number."""
        host = self.kernel.add_fc_host(wwpn, state=state)
        for target in targets:
            self.kernel.add_rport(host, target)
        return host

    def export(self, lun: int, wwid: str = WWID, targets: tuple[str, ...] = (T1, T2)) -> None:
        for target in targets:
            self.kernel.fc_luns[(target, lun)] = wwid

    def scans(self) -> list[tuple[str, str]]:
        return [(p, v) for p, v in self.fs.writes if p.endswith("/scan")]

    def attach(self, vol: VolumeSpec, multipath: bool = True) -> Device:
        return asyncio.run(self.connector.attach(vol, multipath=multipath))

    def detach(self, vol: FcVolume, device: Device) -> None:
        result = asyncio.run(self.connector.detach(vol, device))
        assert not result.data_may_be_lost

    def scsi_devices(self) -> list[str]:
        return sorted(p.name for p in self.kernel.p("/sys/class/scsi_device").glob("*"))


def k2(lun: int = 1, itmap: dict[str, tuple[str, ...]] | None = None,
       targets: tuple[str, ...] = (T1, T2), **kw: object) -> FcVolume:
    """The K2 FC driver's volume: every initiator mapped to every target by default."""
    if itmap is None:
        itmap = {I1: targets, I2: targets}
    return FcVolume(targets, lun, tuple(sorted(itmap.items())), **kw)  # type: ignore[arg-type]
