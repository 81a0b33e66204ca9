"""Read-only views of the initiator side, for assertions in kernel tests.

Read where the tools read them, without a process per look: tests poll these
every 0.2 s, and under emulation an iscsiadm or multipathd client costs 0.1-0.2 s
of CPU each time, taken from the kernel, udev and the agent being waited on
(715 multipathd clients took 120 CPU-s of a 1650 s run). Sessions come from the
iSCSI transport class in sysfs, which `iscsiadm -m session` prints; maps from
multipathd's own socket, which the `multipathd` client talks to.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from .sh import run

ISCSI_SESSIONS = Path("/sys/class/iscsi_session")
ISCSI_CONNECTIONS = Path("/sys/class/iscsi_connection")
MULTIPATHD_SOCKET = "\0/org/kernel/linux/storage/multipathd"  # abstract, as the client uses
_SIZE = struct.Struct("N")  # multipathd frames each message with its size_t length


def _attr(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:  # the session or connection went while it was read
        return ""


def sessions() -> list[tuple[str, str]]:
    """(portal 'ip:port', target iqn) of each iSCSI session, as `iscsiadm -m session`
    prints them: the connection's persistent address and port."""
    result = []
    for session in sorted(ISCSI_SESSIONS.glob("session*")):
        iqn = _attr(session / "targetname")
        conn = ISCSI_CONNECTIONS / f"connection{session.name.removeprefix('session')}:0"
        address, port = _attr(conn / "persistent_address"), _attr(conn / "persistent_port")
        if iqn:
            host = f"[{address}]" if ":" in address else address
            result.append((f"{host}:{port}", iqn))
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


def multipathd(command: str, timeout: float = 60.0) -> str:
    """One command over multipathd's socket, as the `multipathd` client sends its
    arguments: joined by spaces, each one that holds a space in double quotes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(MULTIPATHD_SOCKET)
        data = command.encode() + b"\0"
        sock.sendall(_SIZE.pack(len(data)) + data)
        size = _SIZE.unpack(_read(sock, _SIZE.size))[0]
        return _read(sock, size).rstrip(b"\0").decode(errors="replace")


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("multipathd closed the socket mid-reply")
        data += chunk
    return data


def maps() -> dict[str, MpMap]:
    """Multipath maps by WWID, with their paths, as multipathd sees them now."""
    out = multipathd('show maps raw format "%w %d %s"')
    paths: dict[str, list[MpPath]] = {}
    pout = multipathd('show paths raw format "%w %d %t %T"')
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
