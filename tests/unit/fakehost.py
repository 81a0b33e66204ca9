"""A fake host for connector tests: a sysfs tree under tmp_path that reacts to
hostagent's writes the way the guest's kernel did, plus fake udev and multipathd.

Layouts follow what Linux 6.1 showed in the guest (relative symlinks included),
so the code under test reads the same paths it reads on a real host.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from hostagent.errors import DeviceTimeout
from hostagent.host.fs import HostFS

T = TypeVar("T")
RECORD = (Path(__file__).resolve().parents[1] / "fixtures/guest/iscsiadm_node_record").read_text()


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


@dataclass
class FakeKernel:
    root: Path
    # What the array exports: (iqn, lun) -> wwid. A scan of any other LUN finds nothing.
    luns: dict[tuple[str, int], str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # wwid -> bytes
    flushed: list[str] = field(default_factory=list)
    _next_host: int = 3
    _next_sd: int = 0
    _next_dm: int = 0

    def p(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def write(self, host_path: str, value: str = "") -> None:
        path = self.p(host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)

    # ---- iSCSI sessions ----------------------------------------------------------
    def add_session(self, iqn: str, portal: str, iface: str = "hostagent") -> int:
        host = sid = self._next_host
        self._next_host += 1
        dev = self.p(f"/sys/devices/platform/host{host}/session{sid}/iscsi_session/session{sid}")
        for name, value in (("targetname", iqn), ("ifacename", iface), ("state", "LOGGED_IN"),
                            ("target_id", "0")):
            self.write(f"/sys/devices/platform/host{host}/session{sid}/iscsi_session/"
                       f"session{sid}/{name}", value)
        _link(self.p(f"/sys/class/iscsi_session/session{sid}"), dev)
        address, port = portal.rsplit(":", 1)
        self.write(f"/sys/class/iscsi_connection/connection{sid}:0/persistent_address", address)
        self.write(f"/sys/class/iscsi_connection/connection{sid}:0/persistent_port", port)
        self.write(f"/sys/class/scsi_host/host{host}/scan")
        return host

    def session_host(self, iqn: str, portal: str) -> int | None:
        for link in sorted(self.p("/sys/class/iscsi_session").glob("session*")):
            sid = link.name[7:]
            conn = self.p(f"/sys/class/iscsi_connection/connection{sid}:0")
            if (link / "targetname").read_text() == iqn and \
                    f"{(conn / 'persistent_address').read_text()}:" \
                    f"{(conn / 'persistent_port').read_text()}" == portal:
                return int(Path(os.path.realpath(link)).parents[1].name[7:])
        return None

    def remove_session(self, iqn: str, portal: str) -> None:
        host = self.session_host(iqn, portal)
        assert host is not None, f"no session {iqn} {portal}"
        assert not self.disks_on(host), f"logout of host{host} with disks on it"
        os.unlink(self.p(f"/sys/class/iscsi_session/session{host}"))
        for d in (f"/sys/devices/platform/host{host}", f"/sys/class/iscsi_connection/"
                  f"connection{host}:0", f"/sys/class/scsi_host/host{host}"):
            _rmtree(self.p(d))

    # ---- SCSI disks ----------------------------------------------------------------
    def disks_on(self, host: int) -> list[str]:
        return [d.name for d in self.p("/sys/class/scsi_device").glob(f"{host}:*")]

    def add_disk(self, host: int, lun: int, wwid: str) -> str:
        hctl = f"{host}:0:0:{lun}"
        sd = "sd" + "abcdefghijklmnopqrstuvwxyz"[self._next_sd]
        self._next_sd += 1
        devdir = f"/sys/devices/platform/host{host}/session{host}/target{host}:0:0/{hctl}"
        self.write(f"{devdir}/wwid", "naa." + wwid[1:])
        self.write(f"{devdir}/state", "running")
        self.write(f"{devdir}/delete")
        self.write(f"{devdir}/rescan")
        self.write(f"{devdir}/block/{sd}/dev", f"8:{self._next_sd * 16}")
        self.write(f"{devdir}/block/{sd}/size", str(self.sizes.get(wwid, 64 << 20) // 512))
        self.p(f"{devdir}/block/{sd}/holders").mkdir(parents=True)
        _link(self.p(f"/sys/class/scsi_device/{hctl}/device"), self.p(devdir))
        for cls in ("/sys/class/block", "/sys/block"):
            _link(self.p(f"{cls}/{sd}"), self.p(f"{devdir}/block/{sd}"))
        self.write(f"/run/udev/data/b8:{self._next_sd * 16}")
        self.write(f"/dev/{sd}")
        return sd

    def delete_disk(self, hctl: str) -> None:
        dev = Path(os.path.realpath(self.p(f"/sys/class/scsi_device/{hctl}/device")))
        for sd in os.listdir(dev / "block"):
            assert not os.listdir(dev / "block" / sd / "holders"), f"{sd} still held"
            for cls in ("/sys/class/block", "/sys/block"):
                os.unlink(self.p(f"{cls}/{sd}"))
            self.p(f"/dev/{sd}").unlink()
        _rmtree(self.p(f"/sys/class/scsi_device/{hctl}"))
        _rmtree(dev)

    # ---- device-mapper -------------------------------------------------------------
    def dm_of(self, wwid: str) -> str | None:
        for dm in self.p("/sys/block").glob("dm-*"):
            if (dm / "dm/uuid").read_text() == f"mpath-{wwid}":
                return dm.name
        return None

    def add_path_to_map(self, sd: str) -> None:
        wwid = "3" + (self.p(f"/sys/class/block/{sd}") / "../../wwid").resolve().read_text()[4:]
        dm = self.dm_of(wwid)
        if dm is None:
            dm = f"dm-{self._next_dm}"
            self._next_dm += 1
            base = f"/sys/devices/virtual/block/{dm}"
            self.write(f"{base}/dm/uuid", f"mpath-{wwid}")
            self.write(f"{base}/dev", f"253:{dm[3:]}")
            self.write(f"{base}/size", str(self.sizes.get(wwid, 64 << 20) // 512))
            self.p(f"{base}/slaves").mkdir()
            for cls in ("/sys/class/block", "/sys/block"):
                _link(self.p(f"{cls}/{dm}"), self.p(base))
            self.write(f"/run/udev/data/b253:{dm[3:]}")
            self.write(f"/dev/{dm}")
        _link(self.p(f"/sys/block/{dm}/slaves/{sd}"), self.p(f"/sys/class/block/{sd}"))
        _link(self.p(f"/sys/class/block/{sd}/holders/{dm}"), self.p(f"/sys/block/{dm}"))

    def remove_map(self, wwid: str) -> bool:
        dm = self.dm_of(wwid)
        if dm is None:
            return False
        for sd in os.listdir(self.p(f"/sys/block/{dm}/slaves")):
            os.unlink(self.p(f"/sys/class/block/{sd}/holders/{dm}"))
        base = Path(os.path.realpath(self.p(f"/sys/block/{dm}")))
        for cls in ("/sys/class/block", "/sys/block"):
            os.unlink(self.p(f"{cls}/{dm}"))
        _rmtree(base)
        self.p(f"/dev/{dm}").unlink()
        return True


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if path.is_dir():
        for child in path.iterdir():
            _rmtree(child)
        path.rmdir()


class FakeHostFS(HostFS):
    """HostFS over the fake tree; sysfs writes act as the kernel would."""

    def __init__(self, kernel: FakeKernel) -> None:
        super().__init__(kernel.root)
        self.kernel = kernel

    def write(self, host_path: str, value: str) -> None:
        parts = host_path.split("/")
        if host_path.startswith("/sys/class/scsi_host/") and parts[-1] == "scan":
            self._scan(int(parts[4][4:]), value)
        elif host_path.startswith("/sys/class/scsi_device/") and parts[-1] == "delete":
            self.kernel.delete_disk(parts[4])
        elif host_path.startswith("/sys/class/scsi_device/") and parts[-1] == "rescan":
            self._reidentify(parts[4])
        else:
            super().write(host_path, value)

    def _scan(self, host: int, value: str) -> None:
        channel, target, lun = (int(v) for v in value.split())
        assert (channel, target) == (0, 0), f"unexpected scan {value!r}"
        link = self.path(f"/sys/class/iscsi_session/session{host}")
        iqn = (link / "targetname").read_text()
        wwid = self.kernel.luns.get((iqn, lun))
        if wwid and not self.exists(f"/sys/class/scsi_device/{host}:0:0:{lun}"):
            self.kernel.add_disk(host, lun, wwid)

    def _reidentify(self, hctl: str) -> None:
        """A rescan re-reads VPD 0x83: the disk now reports what the array has there."""
        host, _, _, lun = hctl.split(":")
        iqn = (self.path(f"/sys/class/iscsi_session/session{host}") / "targetname").read_text()
        wwid = self.kernel.luns[(iqn, int(lun))]
        (self.path(f"/sys/class/scsi_device/{hctl}/device") / "wwid").write_text("naa." + wwid[1:])

    def flush_buffers(self, dev_path: str) -> None:
        assert self.exists(dev_path), f"flush of missing {dev_path}"
        self.kernel.flushed.append(dev_path)


class FakeUdev:
    """The fake kernel acts synchronously, so a wait that is not satisfied at once
    would never be: it fails at once instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[str] = []

    async def wait(self, check: Callable[[], T | None], *, timeout: float, what: str) -> T:
        self.waits.append(what)
        value = check()
        if not value:
            raise DeviceTimeout(f"fake udev: {what} never happens", waited_for=what)
        return value


class FakeMultipathd:
    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.commands: list[str] = []
        self.busy: set[str] = set()

    async def command(self, cmd: str, *, timeout: float) -> str:
        self.commands.append(cmd)
        words = cmd.split()
        if words[:2] == ["add", "path"]:
            self.kernel.add_path_to_map(words[2])
            return "ok\n"
        if words[:2] == ["del", "map"]:
            if words[2] in self.busy:
                return "fail\n"
            return "ok\n" if self.kernel.remove_map(words[2]) else "fail\n"
        if words[0] in ("disablequeueing", "resize"):
            return "ok\n"
        raise AssertionError(f"unexpected multipathd command: {cmd}")
