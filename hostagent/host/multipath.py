"""dm-multipath without spawning processes: multipathd's socket and the wwids file.

multipathd answers the same commands `multipathd <cmd>` sends, over its abstract
Unix socket (libmpathcmd: a native size_t length, then the NUL-terminated
command; the reply is framed the same way and reads "ok", "fail" or the data).
The wwids file is edited under the same fcntl lock multipath-tools takes, so
`multipath -a` and `multipath -w` need no process either.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from hostagent.errors import DaemonUnavailable, DeviceBusy, HostCommandError
from hostagent.host.executor import Executor
from hostagent.host.fs import ETC_MULTIPATH, SYS_BLOCK, HostFS

MULTIPATHD_SOCKET = "\0/org/kernel/linux/storage/multipathd"
WWIDS_FILE = f"{ETC_MULTIPATH}/wwids"
_LEN = struct.Struct("N")  # size_t, native: what libmpathcmd writes
_MAX_REPLY = 32 * 1024 * 1024  # libmpathcmd's MAX_REPLY_LEN
WWIDS_HEADER = (
    "# Multipath wwids, Version : 1.0\n"
    "# NOTE: This file is automatically maintained by multipath and multipathd.\n"
    "# You should not need to edit this file in normal circumstances.\n"
    "#\n# Valid WWIDs:\n"
)


def map_wwid(fs: HostFS, name: str) -> str | None:
    """The WWID a device-mapper device serves if it is a multipath map (its dm/uuid is
    `mpath-<WWID>`); None for any other block device."""
    if not name.startswith("dm-"):
        return None
    uuid = fs.try_read(f"{SYS_BLOCK}/{name}/dm/uuid") or ""
    return uuid.removeprefix("mpath-") if uuid.startswith("mpath-") else None


@dataclass(frozen=True)
class DmMap:
    """A multipath map as sysfs shows it at one moment. `name` is what device-mapper,
    dmsetup and multipathd know it by: its WWID, or an alias (mpatha) when
    multipath.conf says user_friendly_names yes; only the WWID is ours to choose."""

    dm: str  # dm-N: reused by the kernel once the map is gone
    name: str
    wwid: str


def map_at(fs: HostFS, dm: str) -> DmMap | None:
    """The multipath map that is `dm` now (its uuid and dm name read from sysfs), or
    None if `dm` is no multipath map (any more)."""
    wwid = map_wwid(fs, dm)
    name = fs.try_read(f"{SYS_BLOCK}/{dm}/dm/name") if wwid else None
    return DmMap(dm, name, wwid) if wwid and name else None


class MultipathdClient(Protocol):
    async def command(self, cmd: str, *, timeout: float) -> str: ...


class SocketClient:
    """One connection per command, as the multipathd CLI does."""

    def __init__(self, path: str = MULTIPATHD_SOCKET) -> None:
        self.path = path
        self.calls = 0

    async def command(self, cmd: str, *, timeout: float) -> str:
        self.calls += 1
        try:
            return await asyncio.wait_for(self._exchange(cmd), timeout)
        except TimeoutError as err:
            raise DaemonUnavailable(f"multipathd did not answer {cmd!r} within {timeout:g} s",
                                    command=cmd) from err
        except OSError as err:
            raise DaemonUnavailable(f"multipathd is not running or refuses us: {err}",
                                    command=cmd) from err

    async def _exchange(self, cmd: str) -> str:
        reader, writer = await asyncio.open_unix_connection(self.path)
        try:
            data = cmd.encode() + b"\0"
            writer.write(_LEN.pack(len(data)) + data)
            await writer.drain()
            (length,) = _LEN.unpack(await reader.readexactly(_LEN.size))
            if length > _MAX_REPLY:
                raise HostCommandError(f"multipathd reply of {length} bytes", command=cmd)
            return (await reader.readexactly(length)).rstrip(b"\0").decode(errors="replace")
        finally:
            writer.close()


@dataclass(frozen=True)
class MapPath:
    device: str
    dm_state: str  # active / failed
    checker: str  # ready / faulty / ghost / ...


def parse_maps_json(text: str) -> dict[str, list[MapPath]]:
    """`show maps json` -> paths of each map, by WWID (the map's uuid)."""
    doc: dict[str, Any] = json.loads(text)
    result: dict[str, list[MapPath]] = {}
    for m in doc.get("maps", []):
        paths = [MapPath(p["dev"], p.get("dm_st", ""), p.get("chk_st", ""))
                 for group in m.get("path_groups", []) for p in group.get("paths", [])]
        result[m["uuid"]] = paths
    return result


@dataclass(frozen=True)
class MapInfo:
    """One map as multipathd reports it: its dm name, table features, paths."""

    wwid: str
    sysfs: str  # dm-N
    features: str  # e.g. "1 queue_if_no_path"
    paths: tuple[MapPath, ...]


def parse_map_infos(text: str) -> dict[str, MapInfo]:
    """`show maps json` -> each map with its features and paths, by WWID."""
    doc: dict[str, Any] = json.loads(text)
    return {m["uuid"]: MapInfo(m["uuid"], m.get("sysfs", ""), m.get("features", ""),
                               tuple(MapPath(p["dev"], p.get("dm_st", ""), p.get("chk_st", ""))
                                     for g in m.get("path_groups", [])
                                     for p in g.get("paths", [])))
            for m in doc.get("maps", [])}


def add_wwid_line(text: str, wwid: str) -> str:
    line = f"/{wwid}/"
    if line in text.splitlines():
        return text
    base = text if text else WWIDS_HEADER
    return base + ("" if base.endswith("\n") else "\n") + line + "\n"


def remove_wwid_line(text: str, wwid: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True)
                   if line.strip() != f"/{wwid}/")


class Multipath:
    def __init__(self, client: MultipathdClient, fs: HostFS, *, timeout: float = 30.0,
                 executor: Executor | None = None) -> None:
        self.client = client
        self.fs = fs
        self.timeout = timeout
        self.executor = executor

    async def _ok(self, cmd: str) -> None:
        reply = await self.client.command(cmd, timeout=self.timeout)
        if reply.strip() != "ok":
            raise HostCommandError(f"multipathd {cmd}: {reply.strip() or 'no reply'}",
                                   command=cmd, reply=reply.strip())

    def remember_wwid(self, wwid: str) -> None:
        """What `multipath -a` does: any find_multipaths policy then takes the device."""
        self.fs.update_locked(WWIDS_FILE, lambda text: add_wwid_line(text, wwid))

    def forget_wwid(self, wwid: str) -> None:
        """What `multipath -w` does."""
        if self.fs.exists(WWIDS_FILE):
            self.fs.update_locked(WWIDS_FILE, lambda text: remove_wwid_line(text, wwid))

    async def add_path(self, device: str) -> None:
        await self._ok(f"add path {device}")

    async def remove_map(self, m: DmMap) -> None:
        """Remove a map nobody holds. Queueing is left as it is: multipathd checks the
        open count first and refuses an open map untouched (libmultipath
        _dm_flush_map), so a refused detach leaves the consumer's map as it was.
        `del map` takes the map's dm name (cli_del_map looks it up as a dm device
        name), never its WWID when user_friendly_names gave it an alias."""
        reply = await self.client.command(f"del map {m.name}", timeout=self.timeout)
        if reply.strip() != "ok" and self.map_device(m.wwid) is not None:
            raise DeviceBusy(f"multipathd could not remove map {m.name} (in use?)",
                             wwid=m.wwid, map=m.name)

    async def disable_queueing(self, m: DmMap) -> None:
        """queue_if_no_path off, in multipathd too (a reload it makes cannot queue
        again): I/O to a map with every path dead then fails instead of waiting for
        ever. A forced detach sends it before anything that can block on I/O."""
        await self._ok(f"disablequeueing map {m.name}")

    async def force_remove(self, m: DmMap) -> None:
        """Last resort of a forced detach of a map still open (queueing already off):
        the table replaced by one that fails every I/O at once (its holder gets EIO
        instead of hanging), and the map's removal deferred until its last close.
        dmsetup's failure ("Device does not exist", an ioctl refused) is raised:
        nothing else would tell that the map was not forced."""
        if self.executor is None:
            raise DeviceBusy(f"map {m.name} is in use and no executor can force it",
                             wwid=m.wwid, map=m.name)
        await self.executor.run(["dmsetup", "remove", "--force", "--deferred", m.name],
                                timeout=self.timeout)

    async def status(self) -> str:
        """multipathd's `show status`: raises DaemonUnavailable when it does not answer."""
        return await self.client.command("show status", timeout=self.timeout)

    async def resize(self, m: DmMap) -> None:
        await self._ok(f"resize map {m.name}")

    async def paths(self) -> dict[str, list[MapPath]]:
        return parse_maps_json(await self.client.command("show maps json",
                                                         timeout=self.timeout))

    async def map_infos(self) -> dict[str, MapInfo]:
        return parse_map_infos(await self.client.command("show maps json",
                                                         timeout=self.timeout))

    def map_device(self, wwid: str, over: Iterable[str] = ()) -> str | None:
        """dm-N of the multipath map for `wwid`, from sysfs. `over`: disks the map
        should hold; their holders are tried first, O(paths) instead of O(maps) (a
        reused sd name holds another map, which its uuid tells apart). Every map is
        read only when none of them is held by it."""
        return self.map_holding(wwid, over) or next(
            (name for name in self.fs.listdir(SYS_BLOCK) if self._is_map_of(name, wwid)), None)

    def find(self, wwid: str, over: Iterable[str] = ()) -> DmMap | None:
        """`wwid`'s map now, with the name to address it by (see map_device)."""
        dm = self.map_device(wwid, over)
        m = map_at(self.fs, dm) if dm else None
        return m if m and m.wwid == wwid else None

    def map_holding(self, wwid: str, disks: Iterable[str]) -> str | None:
        """dm-N of `wwid`'s map if it holds one of `disks`, from their holders alone."""
        for sd in disks:
            for name in self.fs.listdir(f"{SYS_BLOCK}/{sd}/holders"):
                if self._is_map_of(name, wwid):
                    return name
        return None

    def _is_map_of(self, name: str, wwid: str) -> bool:
        return map_wwid(self.fs, name) == wwid
