"""The network as preflight sees it: can a portal be reached, and by which way.

Routes come from the kernel over netlink (pyroute2), the way `ip route get`
answers, so no process is started; the TCP connect is a real connect.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any, Protocol

IFF_UP = 0x1  # linux/if.h
RTN_LOCAL = 2  # linux/rtnetlink.h: a route to an address of this host
_DOWN_STATES = ("DOWN", "LOWERLAYERDOWN", "NOTPRESENT")


@dataclass(frozen=True)
class Route:
    address: str  # the portal's address the route was asked for
    ifname: str
    up: bool
    source: str | None
    mtu: int


class Net(Protocol):
    async def connect(self, host: str, port: int, timeout: float) -> None: ...

    async def route(self, host: str) -> Route: ...


class HostNet:
    async def connect(self, host: str, port: int, timeout: float) -> None:
        """Raise OSError or TimeoutError when no TCP connection forms in time."""
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        writer.close()
        await writer.wait_closed()

    async def route(self, host: str) -> Route:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        address = str(infos[0][4][0])
        return await asyncio.to_thread(_route, address)


def _route(address: str) -> Route:
    # Imported here: the pyroute2 package loads NDB and IPDB on import (~0.3 s),
    # and only preflight needs it; the daemon and the CLI start without it.
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            msg = ipr.route("get", dst=address)[0]
        except NetlinkError as err:  # e.g. ENETUNREACH: no route at all
            raise OSError(err.code, f"no route to {address}: {err}") from err
        index = msg.get_attr("RTA_OIF")
        if msg["type"] == RTN_LOCAL:
            # A portal on this host (a test bed, an appliance) leaves by lo; the
            # interface that holds the address is the one whose state matters.
            owners = ipr.get_addr(address=address)
            index = owners[0]["index"] if owners else index
        link = ipr.get_links(index)[0]
    return route_from_netlink(address, msg, link)


def route_from_netlink(address: str, msg: Any, link: Any) -> Route:
    """The parts of an RTM_NEWROUTE answer and its RTM_NEWLINK preflight needs."""
    state = link.get_attr("IFLA_OPERSTATE") or ""
    up = bool(link["flags"] & IFF_UP) and state not in _DOWN_STATES
    mtu = int(link.get_attr("IFLA_MTU") or 0)
    metrics = msg.get_attr("RTA_METRICS")
    if metrics is not None and metrics.get_attr("RTAX_MTU"):
        mtu = int(metrics.get_attr("RTAX_MTU"))  # a route's own MTU wins over the link's
    return Route(address, str(link.get_attr("IFLA_IFNAME")), up,
                 msg.get_attr("RTA_PREFSRC"), mtu)
