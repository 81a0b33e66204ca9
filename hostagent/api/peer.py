"""Who may talk to the agent: the Unix socket peer's credentials against an allow-list."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from aiohttp import web

from hostagent.errors import Forbidden
from hostagent.host.fs import PROC, HostFS


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gids: frozenset[int]


class PeerCheck:
    """SO_PEERCRED of the Unix socket peer against an allow-list; root always passes.

    The kernel's credentials give the primary gid only; supplementary groups
    come from the peer's /proc status, so membership in the socket's group counts.
    """

    def __init__(self, fs: HostFS, uids: frozenset[int], gids: frozenset[int]) -> None:
        self.fs, self.uids, self.gids = fs, uids, gids

    def peer(self, request: web.Request) -> Peer:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is None or sock.family != socket.AF_UNIX:
            raise Forbidden("only local Unix-socket peers are served")
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return Peer(pid, uid, frozenset({gid, *self._groups(pid)}))

    def _groups(self, pid: int) -> set[int]:
        for line in (self.fs.try_read(f"{PROC}/{pid}/status") or "").splitlines():
            if line.startswith("Groups:"):
                return {int(g) for g in line.split()[1:]}
        return set()

    def check(self, request: web.Request) -> Peer:
        peer = self.peer(request)
        if peer.uid == 0 or peer.uid in self.uids or peer.gids & self.gids:
            return peer
        raise Forbidden(f"uid {peer.uid} is not allowed to use hostagent",
                        uid=peer.uid, pid=peer.pid)
