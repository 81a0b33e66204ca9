"""Who may talk to the agent: the Unix socket peer's credentials against an allow-list."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from hostagent.errors import Forbidden


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gids: frozenset[int]


class PeerCheck:
    """SO_PEERCRED of the Unix socket peer against an allow-list; root always passes.

    The kernel's credentials give the primary gid only; supplementary groups
    come from `groups` (the peer's /proc status), so membership in the socket's group counts.
    """

    def __init__(self, groups: Callable[[int], frozenset[int]], uids: frozenset[int],
                 gids: frozenset[int]) -> None:
        self.groups, self.uids, self.gids = groups, uids, gids

    def peer(self, request: web.Request) -> Peer:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is None or sock.family != socket.AF_UNIX:
            raise Forbidden("only local Unix-socket peers are served")
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return Peer(pid, uid, frozenset({gid, *self.groups(pid)}))

    def check(self, request: web.Request) -> Peer:
        peer = self.peer(request)
        if peer.uid == 0 or peer.uid in self.uids or peer.gids & self.gids:
            return peer
        raise Forbidden(f"uid {peer.uid} is not allowed to use hostagent",
                        uid=peer.uid, pid=peer.pid)
