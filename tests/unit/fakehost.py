"""A fake host for connector tests: a sysfs tree under tmp_path that reacts to
hostagent's writes the way the guest's kernel did, plus fake udev and multipathd.

Layouts follow what Linux 6.1 showed in the guest (relative symlinks included),
so the code under test reads the same paths it reads on a real host.
"""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from hostagent.errors import DaemonUnavailable, DeviceTimeout
from hostagent.host.fs import HostFS
from tests.unit.fakes import FakeExecutor

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
    # The same over FC: (target WWPN, Linux LUN) -> wwid.
    fc_luns: dict[tuple[str, int], str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # wwid -> bytes
    flushed: list[str] = field(default_factory=list)
    # What acted on devices, in order: "flush <dev>" and "multipathd <command>".
    log: list[str] = field(default_factory=list)
    # Maps (dm-N) queueing with every path dead (all_paths_dead): a flush of one
    # blocks, as BLKFLSBUF does, until queueing is turned off (the queued I/O then
    # fails: EIO) or for at most 5 s (so that code waiting for it on the event loop
    # fails its test instead of hanging it).
    stuck: dict[str, threading.Event] = field(default_factory=dict)
    # multipath.conf's user_friendly_names: a new map is named mpatha, mpathb, ...
    # (the lowest alias free) instead of by its WWID.
    user_friendly_names: bool = False
    # The real kernel serializes its changes; hostagent makes them from worker threads.
    lock: threading.RLock = field(default_factory=threading.RLock)
    _next_ctlr: int = 0
    # Udev's work the kernel queued, in event order: each is (database entry, whether
    # udev creates it (add) or removes it (remove)). FakeUdev does it while waited on.
    udev_pending: list[tuple[Path, bool]] = field(default_factory=list)
    first_host: int = 3  # hosts 0-2 are the guest's other controllers

    # Linux hands a new SCSI host, disk or map the lowest free number (an ida), so
    # names come back: code that trusts one to still mean its volume is caught here.
    def _free_host(self) -> int:
        n = self.first_host
        while self.p(f"/sys/class/scsi_host/host{n}").exists():
            n += 1
        return n

    def _free_sd(self) -> tuple[str, int]:
        n = 0
        while self.p(f"/sys/block/{sd_name(n)}").exists():
            n += 1
        return sd_name(n), n

    def _free_dm(self) -> str:
        n = 0
        while self.p(f"/sys/block/dm-{n}").exists():
            n += 1
        return f"dm-{n}"

    def _map_name_for(self, wwid: str) -> str:
        """The dm name multipathd gives a new map: its WWID, or with
        user_friendly_names the lowest alias no map has (libmultipath's bindings)."""
        if not self.user_friendly_names:
            return wwid
        n = 0
        while self.dm_named(f"mpath{sd_name(n)[2:]}") is not None:
            n += 1
        return f"mpath{sd_name(n)[2:]}"

    def p(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def write(self, host_path: str, value: str = "") -> None:
        path = self.p(host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)

    # ---- iSCSI sessions ----------------------------------------------------------
    def add_session(self, iqn: str, portal: str, iface: str = "hostagent") -> int:
        host = sid = self._free_host()
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

    def add_disk(self, host: int, lun: int, wwid: str, *, channel: int = 0, target: int = 0,
                 parent: str | None = None) -> str:
        """An sd at H:C:T:L under `parent` (the target's directory; iSCSI's by default)."""
        hctl = f"{host}:{channel}:{target}:{lun}"
        sd, index = self._free_sd()
        parent = parent or f"/sys/devices/platform/host{host}/session{host}/target{host}:0:0"
        devdir = f"{parent}/{hctl}"
        self.write(f"{devdir}/wwid", "naa." + wwid[1:])
        self.write(f"{devdir}/state", "running")
        self.write(f"{devdir}/delete")
        self.write(f"{devdir}/rescan")
        self.write(f"{devdir}/block/{sd}/dev", f"8:{index * 16}")
        self.write(f"{devdir}/block/{sd}/size", str(self.sizes.get(wwid, 64 << 20) // 512))
        self.p(f"{devdir}/block/{sd}/holders").mkdir(parents=True)
        _link(self.p(f"{devdir}/block/{sd}/device"), self.p(devdir))
        _link(self.p(f"/sys/class/scsi_device/{hctl}/device"), self.p(devdir))
        for cls in ("/sys/class/block", "/sys/block"):
            _link(self.p(f"{cls}/{sd}"), self.p(f"{devdir}/block/{sd}"))
        self.udev_pending.append((self.p(f"/run/udev/data/b8:{index * 16}"), True))
        self.write(f"/dev/{sd}")
        by_id = self.p(f"/dev/disk/by-id/scsi-{wwid}")
        by_id.parent.mkdir(parents=True, exist_ok=True)
        by_id.unlink(missing_ok=True)  # udev points it at the newest disk of the WWID
        by_id.symlink_to(f"../../{sd}")
        return sd

    def delete_disk(self, hctl: str) -> None:
        dev = Path(os.path.realpath(self.p(f"/sys/class/scsi_device/{hctl}/device")))
        for sd in os.listdir(dev / "block"):
            assert not os.listdir(dev / "block" / sd / "holders"), f"{sd} still held"
            # udev processes the removal later, while someone waits for udev: until
            # then the old disk's database entry is still there (stale).
            self.udev_pending.append((self.p(f"/run/udev/data/b"
                                             f"{(dev / 'block' / sd / 'dev').read_text()}"),
                                      False))
            for cls in ("/sys/class/block", "/sys/block"):
                os.unlink(self.p(f"{cls}/{sd}"))
            self.p(f"/dev/{sd}").unlink()
            for link in self.p("/dev/disk/by-id").glob("*"):
                if os.readlink(link) == f"../../{sd}":
                    link.unlink()
        _rmtree(self.p(f"/sys/class/scsi_device/{hctl}"))
        _rmtree(dev)

    # ---- Fibre Channel (the layout software FCoE showed in the guest) ----------------
    def add_fc_host(self, port_name: str, *, state: str = "Online",
                    node_name: str | None = None) -> int:
        """A local FC port: fc_host and scsi_host under its FCoE controller."""
        host = self._free_host()
        base = f"/sys/devices/virtual/net/fcA{host}/ctlr_{self._next_ctlr}/host{host}"
        self._next_ctlr += 1
        attrs = {"port_name": "0x" + port_name, "port_state": state,
                 "node_name": "0x" + (node_name or "1000" + port_name[4:]),
                 "tgtid_bind_type": "wwpn (World Wide Port Name)"}
        for name, value in attrs.items():
            self.write(f"{base}/fc_host/host{host}/{name}", value)
        self.write(f"{base}/scsi_host/host{host}/scan")
        _link(self.p(f"/sys/class/fc_host/host{host}"), self.p(f"{base}/fc_host/host{host}"))
        _link(self.p(f"/sys/class/scsi_host/host{host}"), self.p(f"{base}/scsi_host/host{host}"))
        return host

    def fc_host_base(self, host: int) -> str:
        real = Path(os.path.realpath(self.p(f"/sys/class/fc_host/host{host}")))
        return "/" + str(real.parents[1].relative_to(self.root))

    def add_rport(self, host: int, port_name: str, *, roles: str = "FCP Target",
                  state: str = "Online", target_id: int | None = None,
                  channel: int = 0) -> str:
        """A remote port seen by `host`; an FCP target gets the next free target id."""
        taken = [r for r in self.rports() if r.startswith(f"rport-{host}:")]
        name = f"rport-{host}:{channel}-{len(taken)}"
        if target_id is None:
            target_id = -1 if "FCP Target" not in roles else sum(
                self.read_rport(r, "scsi_target_id") != "-1" for r in taken)
        base = f"{self.fc_host_base(host)}/{name}/fc_remote_ports/{name}"
        for attr, value in (("port_name", "0x" + port_name), ("roles", roles),
                            ("port_state", state), ("scsi_target_id", str(target_id)),
                            ("node_name", "0x1000" + port_name[4:])):
            self.write(f"{base}/{attr}", value)
        _link(self.p(f"/sys/class/fc_remote_ports/{name}"), self.p(base))
        return name

    def rports(self) -> list[str]:
        return sorted(p.name for p in self.p("/sys/class/fc_remote_ports").glob("rport-*"))

    def read_rport(self, name: str, attr: str) -> str:
        return (self.p(f"/sys/class/fc_remote_ports/{name}") / attr).read_text()

    def set_rport(self, name: str, attr: str, value: str) -> None:
        (self.p(f"/sys/class/fc_remote_ports/{name}") / attr).write_text(value)

    def set_fc_host_state(self, host: int, state: str) -> None:
        (self.p(f"/sys/class/fc_host/host{host}") / "port_state").write_text(state)

    def is_fc_host(self, host: int) -> bool:
        return self.p(f"/sys/class/fc_host/host{host}").exists()

    def fc_scan(self, host: int, channel: int, target: int | None, lun: int) -> None:
        """What fc_user_scan does: the LUN on every matching online FCP target port."""
        for name in self.rports():
            h, c = (int(v) for v in name[6:].split("-")[0].split(":"))
            tid = int(self.read_rport(name, "scsi_target_id"))
            if (h, c) != (host, channel) or tid < 0 or target not in (None, tid) or \
                    "FCP Target" not in self.read_rport(name, "roles") or \
                    self.read_rport(name, "port_state") != "Online":
                continue
            wwid = self.fc_luns.get((self.read_rport(name, "port_name")[2:], lun))
            if wwid and not self.p(f"/sys/class/scsi_device/{host}:{channel}:{tid}:{lun}").exists():
                parent = f"{self.fc_host_base(host)}/{name}/target{host}:{channel}:{tid}"
                self.add_disk(host, lun, wwid, channel=channel, target=tid, parent=parent)

    def rport_of_target(self, host: int, channel: int, target: int) -> str:
        for name in self.rports():
            if name.startswith(f"rport-{host}:{channel}-") and \
                    self.read_rport(name, "scsi_target_id") == str(target):
                return name
        raise AssertionError(f"no remote port at {host}:{channel}:{target}")

    # ---- device-mapper -------------------------------------------------------------
    def dm_of(self, wwid: str) -> str | None:
        for dm in self.p("/sys/block").glob("dm-*"):
            if (dm / "dm/uuid").read_text() == f"mpath-{wwid}":
                return dm.name
        return None

    def dm_named(self, name: str) -> str | None:
        """dm-N of the device-mapper device called `name` (what dmsetup and multipathd
        look a map up by)."""
        for dm in self.p("/sys/block").glob("dm-*"):
            if (dm / "dm/name").read_text() == name:
                return dm.name
        return None

    def all_paths_dead(self, wwid: str) -> threading.Event:
        """`wwid`'s map loses every path with queue_if_no_path on; set the event
        returned to end a flush still blocked (as queueing turned off does)."""
        dm = self.dm_of(wwid)
        assert dm is not None, f"no map {wwid}"
        self.stuck[dm] = threading.Event()
        return self.stuck[dm]

    def map_name(self, wwid: str) -> str:
        dm = self.dm_of(wwid)
        assert dm is not None, f"no map {wwid}"
        return self.p(f"/sys/block/{dm}/dm/name").read_text()

    def add_path_to_map(self, sd: str) -> None:
        wwid = "3" + (self.p(f"/sys/class/block/{sd}") / "../../wwid").resolve().read_text()[4:]
        dm = self.dm_of(wwid)
        if dm is None:
            dm = self._free_dm()
            base = f"/sys/devices/virtual/block/{dm}"
            self.write(f"{base}/dm/uuid", f"mpath-{wwid}")
            self.write(f"{base}/dm/name", self._map_name_for(wwid))
            self.write(f"{base}/dev", f"253:{dm[3:]}")
            self.write(f"{base}/size", str(self.sizes.get(wwid, 64 << 20) // 512))
            self.p(f"{base}/slaves").mkdir()
            for cls in ("/sys/class/block", "/sys/block"):
                _link(self.p(f"{cls}/{dm}"), self.p(base))
            self.write(f"/run/udev/data/b253:{dm[3:]}")
            self.write(f"/dev/{dm}")
            by_id = self.p(f"/dev/disk/by-id/dm-uuid-mpath-{wwid}")
            by_id.parent.mkdir(parents=True, exist_ok=True)
            by_id.symlink_to(f"../../{dm}")  # as udev's 13-dm-disk.rules makes it
        _link(self.p(f"/sys/block/{dm}/slaves/{sd}"), self.p(f"/sys/class/block/{sd}"))
        _link(self.p(f"/sys/class/block/{sd}/holders/{dm}"), self.p(f"/sys/block/{dm}"))

    def error_table(self, wwid: str) -> None:
        """`dmsetup remove --force --deferred` of an open map: its table fails all I/O
        (it holds no disk any more) and the map stays until its last close."""
        dm = self.dm_of(wwid)
        assert dm is not None, f"no map {wwid}"
        for sd in os.listdir(self.p(f"/sys/block/{dm}/slaves")):
            os.unlink(self.p(f"/sys/class/block/{sd}/holders/{dm}"))
            os.unlink(self.p(f"/sys/block/{dm}/slaves/{sd}"))

    def remove_map(self, wwid: str) -> bool:
        dm = self.dm_of(wwid)
        if dm is None:
            return False
        self.stuck.pop(dm, None)  # the name may be given to another map
        for sd in os.listdir(self.p(f"/sys/block/{dm}/slaves")):
            os.unlink(self.p(f"/sys/class/block/{sd}/holders/{dm}"))
        base = Path(os.path.realpath(self.p(f"/sys/block/{dm}")))
        for cls in ("/sys/class/block", "/sys/block"):
            os.unlink(self.p(f"{cls}/{dm}"))
        _rmtree(base)
        self.p(f"/dev/{dm}").unlink()
        self.p(f"/run/udev/data/b253:{dm[3:]}").unlink()
        self.p(f"/dev/disk/by-id/dm-uuid-mpath-{wwid}").unlink()
        return True


def sd_name(index: int) -> str:
    """The kernel's sd naming: sda..sdz, sdaa..sdzz, sdaaa..."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = "abcdefghijklmnopqrstuvwxyz"[rest] + letters
    return "sd" + letters


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if path.is_dir():
        for child in path.iterdir():
            _rmtree(child)
        path.rmdir()


def drop_from_map(kernel: FakeKernel, sd: str) -> None:
    """What multipathd does when a path's disk goes (or is taken out of the map)."""
    dm = os.listdir(kernel.p(f"/sys/class/block/{sd}/holders"))[0]
    os.unlink(kernel.p(f"/sys/block/{dm}/slaves/{sd}"))
    os.unlink(kernel.p(f"/sys/class/block/{sd}/holders/{dm}"))


class FakeHostFS(HostFS):
    """HostFS over the fake tree; sysfs writes act as the kernel would."""

    def __init__(self, kernel: FakeKernel) -> None:
        super().__init__(kernel.root)
        self.kernel = kernel
        self.writes: list[tuple[str, str]] = []  # every write, in order, as made

    def write(self, host_path: str, value: str) -> None:
        with self.kernel.lock:
            self._write(host_path, value)

    def _write(self, host_path: str, value: str) -> None:
        self.writes.append((host_path, value))
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
        words = value.split()
        assert len(words) == 3 and "-" not in words, f"not a targeted scan: {value!r}"
        channel, target, lun = (int(v) for v in words)
        if self.kernel.is_fc_host(host):
            self.kernel.fc_scan(host, channel, target, lun)
            return
        assert (channel, target) == (0, 0), f"unexpected scan {value!r}"
        link = self.path(f"/sys/class/iscsi_session/session{host}")
        iqn = (link / "targetname").read_text()
        wwid = self.kernel.luns.get((iqn, lun))
        if wwid and not self.exists(f"/sys/class/scsi_device/{host}:0:0:{lun}"):
            self.kernel.add_disk(host, lun, wwid)

    def _reidentify(self, hctl: str) -> None:
        """A rescan re-reads VPD 0x83: the disk now reports what the array has there."""
        host, channel, target, lun = (int(v) for v in hctl.split(":"))
        if self.kernel.is_fc_host(host):
            rport = self.kernel.rport_of_target(host, channel, target)
            wwid = self.kernel.fc_luns[(self.kernel.read_rport(rport, "port_name")[2:], lun)]
        else:
            iqn = (self.path(f"/sys/class/iscsi_session/session{host}") /
                   "targetname").read_text()
            wwid = self.kernel.luns[(iqn, lun)]
        (self.path(f"/sys/class/scsi_device/{hctl}/device") / "wwid").write_text("naa." + wwid[1:])

    def set_read_only(self, dev_path: str) -> None:
        with self.kernel.lock:
            assert self.exists(dev_path), f"BLKROSET on missing {dev_path}"
            self.kernel.write(f"/sys/block/{dev_path.rsplit('/', 1)[-1]}/ro", "1")

    def flush_buffers(self, dev_path: str) -> None:
        with self.kernel.lock:
            assert self.exists(dev_path), f"flush of missing {dev_path}"
            self.kernel.flushed.append(dev_path)
            self.kernel.log.append(f"flush {dev_path}")
            gate = self.kernel.stuck.get(dev_path.rsplit("/", 1)[-1])
        # Blocked outside the lock: the rest of the kernel goes on meanwhile.
        if gate is not None and gate.wait(5.0):
            raise OSError(errno.EIO, os.strerror(errno.EIO), dev_path)


class FakeUdev:
    """The fake kernel acts synchronously, so a wait that is not satisfied once udev
    has caught up would never be: it fails at once instead of sleeping. Udev
    catches up on what the kernel queued (FakeKernel.udev_pending) during a wait."""

    def __init__(self, kernel: FakeKernel | None = None) -> None:
        self.kernel = kernel
        self.waits: list[str] = []

    async def wait(self, check: Callable[[], T | None], *, timeout: float, what: str) -> T:
        self.waits.append(what)
        # Checked before udev catches up, as PyudevWatcher does: a stale entry passes.
        value = check()
        if value:
            return value
        self.settle()
        value = check()
        if not value:
            raise DeviceTimeout(f"fake udev: {what} never happens", waited_for=what)
        return value

    def settle(self) -> None:
        """What `udevadm settle` waits for: every queued event processed, in order."""
        if self.kernel is None:
            return
        with self.kernel.lock:
            self._settle(self.kernel)

    @staticmethod
    def _settle(kernel: FakeKernel) -> None:
        for entry, added in kernel.udev_pending:
            if added:
                entry.parent.mkdir(parents=True, exist_ok=True)
                entry.write_text("")
            else:
                entry.unlink(missing_ok=True)
        kernel.udev_pending.clear()


class FakeMultipathd:
    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.commands: list[str] = []
        self.busy: set[str] = set()
        # `add path` answers "fail" this many more times for a disk, as multipathd does
        # while it still holds a stale view of the sd name (0.9.4, in a CI run).
        self.add_refusals: dict[str, int] = {}
        self.queueing_disabled: set[str] = set()  # maps whose queue_if_no_path is off
        # `show maps json`: (dm_st, chk_st) of a path by sd name; active/ready otherwise.
        self.path_states: dict[str, tuple[str, str]] = {}
        self.features = "1 queue_if_no_path"
        self.running = True

    async def command(self, cmd: str, *, timeout: float) -> str:
        self.commands.append(cmd)
        if not self.running:
            raise DaemonUnavailable("multipathd is not running or refuses us: [Errno 111] "
                                    "Connection refused", command=cmd)
        with self.kernel.lock:
            if "map" in cmd.split()[:2]:
                self.kernel.log.append(f"multipathd {cmd}")
            return self._answer(cmd)

    def _find_map(self, param: str, *, by_minor: bool) -> str | None:
        """The dm-N a map command names, looked up as multipathd does
        (multipath-tools multipathd/cli_handlers.c): `del map` asks device-mapper for
        the device of that name (cli_del_map: dm_get_major_minor(param)), so only the
        map's dm name (its WWID, or its alias under user_friendly_names) works;
        `disablequeueing`, `restorequeueing` and `resize map` take "dm-N"
        (find_mp_by_minor) or the alias (find_mp_by_alias). A WWID that is not the
        map's name is refused: "fail"."""
        dm = self.kernel.dm_named(param)
        if dm is None and by_minor and param.startswith("dm-") and \
                self.kernel.p(f"/sys/block/{param}/dm/uuid").exists():
            dm = param
        return dm

    def _answer(self, cmd: str) -> str:
        words = cmd.split()
        if cmd == "show status":
            return "path checkers states:\nup 2\n"
        if words[:2] == ["add", "path"]:
            if self.add_refusals.get(words[2], 0) > 0:
                self.add_refusals[words[2]] -= 1
                return "fail\n"
            self.kernel.add_path_to_map(words[2])
            return "ok\n"
        if words[:2] == ["del", "map"]:
            dm = self._find_map(words[2], by_minor=False)
            if dm is None or words[2] in self.busy:  # busy: by the map's name
                return "fail\n"
            self.kernel.remove_map(self._wwid_of(dm))
            return "ok\n"
        if words[0] in ("disablequeueing", "restorequeueing", "resize"):
            # multipathd refuses a map it does not have, as it does every other command.
            if words[1:2] != ["map"] or self._find_map(words[2], by_minor=True) is None:
                return "fail\n"
            if words[0] == "disablequeueing":
                self.queueing_disabled.add(words[2])
                dm = self._find_map(words[2], by_minor=True)
                if dm in self.kernel.stuck:  # queued I/O fails now, and new I/O at once
                    self.kernel.stuck[dm].set()
            elif words[0] == "restorequeueing":
                self.queueing_disabled.discard(words[2])
            return "ok\n"
        if cmd == "show maps json":
            return self.maps_json()
        raise AssertionError(f"unexpected multipathd command: {cmd}")

    def maps_json(self) -> str:
        """What `show maps json` answers, from the fake kernel's maps."""
        maps = []
        block = str(self.kernel.p("/sys/block"))
        names = os.listdir(block) if os.path.isdir(block) else []
        for name in sorted(n for n in names if n.startswith("dm-")):
            dm = f"{block}/{name}"
            with open(f"{dm}/dm/uuid") as f:
                uuid = f.read().removeprefix("mpath-")
            with open(f"{dm}/dm/name") as f:
                alias = f.read()
            paths = [{"dev": sd, "dm_st": self.path_states.get(sd, ("active", "ready"))[0],
                      "chk_st": self.path_states.get(sd, ("active", "ready"))[1]}
                     for sd in sorted(os.listdir(f"{dm}/slaves"))]
            maps.append({"name": alias, "uuid": uuid, "sysfs": name,
                         "features": self.features,
                         "path_groups": [{"paths": [p]} for p in paths]})
        return json.dumps({"major_version": 0, "minor_version": 1, "maps": maps})

    def _wwid_of(self, dm: str) -> str:
        return self.kernel.p(f"/sys/block/{dm}/dm/uuid").read_text().removeprefix("mpath-")


def expect_dmsetup_remove(executor: FakeExecutor, kernel: FakeKernel, name: str) -> None:
    """`dmsetup remove --force --deferred <name>` as dmsetup answers it: a map of that
    name gets a table that fails all I/O (FakeKernel.error_table); with none, exit 1
    and "Device does not exist." (libdevmapper's message for an unknown name). Decided
    when scripted, as FakeExecutor's replies are."""
    dm = kernel.dm_named(name)
    argv = ["dmsetup", "remove", "--force", "--deferred", name]
    if dm is None:
        executor.expect(argv, returncode=1,
                        stderr=f"device-mapper: remove ioctl on {name}  failed: No such device "
                               "or address\nDevice does not exist.\nCommand failed.")
        return
    wwid = kernel.p(f"/sys/block/{dm}/dm/uuid").read_text().removeprefix("mpath-")
    executor.expect(argv, side_effect=lambda: kernel.error_table(wwid))
