"""The network as preflight sees it: can a portal be reached, and by which way;
and this host's own side of it, as the connector reports it: its addresses, the
source address of its default route, a service on localhost.

Routes and addresses come from the kernel over netlink (pyroute2), the way `ip
route get` and `ip addr` answer, so no process is started; the TCP connect is a
real connect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

IFF_UP = 0x1  # linux/if.h
RTN_LOCAL = 2  # linux/rtnetlink.h: a route to an address of this host
RT_SCOPE_UNIVERSE = 0  # linux/rtnetlink.h: a global address
IFA_F_DADFAILED = 0x08  # linux/if_addr.h: an IPv6 address duplicate address detection refused
IFA_F_TENTATIVE = 0x40  # ... and one it has not yet accepted: neither is a usable source
# Addresses beyond every local network (RFC 5737 TEST-NET-1, RFC 3849), the ones
# oslo.utils' get_my_ipv4 / get_my_ipv6 ask the kernel about: the route to them is
# the default route, and its source is the address nova's my_ip defaults to.
OUTSIDE = ((socket.AF_INET, "192.0.2.0"), (socket.AF_INET6, "2001:db8::1"))
T = TypeVar("T")
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


# ---- this host's own side: the connector's `ip` and `host_ips` ----------------------

def is_loopback(ip: str | None) -> bool:
    """`ip` is a loopback address (127.0.0.0/8, ::1, or 127.x mapped into IPv6); False
    for anything that is not an address at all (None, "", a name)."""
    if not ip:
        return False
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


@dataclass(frozen=True)
class Address:
    """One address of this host, as the kernel lists it (RTM_GETADDR)."""

    name: str  # the interface as getifaddrs(3) names it: an IPv4 address's label, else the link
    family: int  # socket.AF_INET or AF_INET6
    address: str  # IFA_LOCAL, else IFA_ADDRESS (what getifaddrs reports); no IPv6 "%scope"
    scope: int = RT_SCOPE_UNIVERSE
    flags: int = 0  # IFA_F_*

    @property
    def usable_source(self) -> bool:
        return (self.scope == RT_SCOPE_UNIVERSE and not is_loopback(self.address)
                and not self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED))


def choose_ip(default_sources: Iterable[str | None],
              addresses: Callable[[], Sequence[Address]]) -> str | None:
    """This host's address for the connector's `ip`, never a loopback one: the source
    of the default route (IPv4's, then IPv6's); with no default route (or one whose
    source is loopback), the first global address (IPv4 first); None when the host has
    no address but loopback and link-local ones, rather than a guess that is wrong.
    `addresses` is only asked when no default route gives a source."""
    for source in default_sources:
        if source and not is_loopback(source):
            return source
    found = addresses()
    for family in (socket.AF_INET, socket.AF_INET6):
        for addr in found:
            if addr.family == family and addr.usable_source:
                return addr.address
    return None


def getifaddrs_order(addresses: Iterable[Address]) -> list[Address]:
    """The addresses in the order psutil.net_if_addrs() gives them (os-brick's LightOS
    `host_ips`): sorted by family (stable, so IPv4 before IPv6, each in the kernel's dump
    order), then grouped by interface name in the order each name first appears."""
    by_name: dict[str, list[Address]] = {}
    for addr in sorted(addresses, key=lambda a: a.family):
        by_name.setdefault(addr.name, []).append(addr)
    return [addr for group in by_name.values() for addr in group]


def address_from_netlink(msg: Any, link_names: Mapping[int, str]) -> Address | None:
    """An RTM_NEWADDR answer as getifaddrs(3) reports it; None for a family it skips."""
    family = int(msg["family"])
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if not address:
        return None
    link = link_names.get(int(msg["index"]), str(msg["index"]))
    name = (msg.get_attr("IFA_LABEL") or link) if family == socket.AF_INET else link
    flags = msg.get_attr("IFA_FLAGS")
    return Address(str(name), family, str(address), int(msg["scope"]),
                   int(flags if flags is not None else msg["flags"]))


class LocalNet(Protocol):
    """This host's own side of the network, for the connector properties."""

    def default_sources(self) -> list[str | None]:
        """The kernel's source address towards OUTSIDE, per family (IPv4, IPv6); None
        for a family without a route there (no default route)."""
        ...

    def addresses(self) -> list[Address]:
        """Every address of every interface, in the kernel's dump order."""
        ...

    def http_ok(self, host: str, port: int, path: str, timeout: float) -> bool:
        """A HEAD request to http://host:port/path answers 200 OK."""
        ...


def _off_loop(call: Callable[[], T]) -> T:
    """`call` in a thread of its own: pyroute2's IPRoute runs an event loop of its own,
    which cannot start in a thread whose loop runs (an API handler's)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


class HostLocalNet:
    """LocalNet over netlink; blocking calls of a few netlink messages each (the
    caller's thread waits, its event loop included: milliseconds)."""

    def default_sources(self) -> list[str | None]:
        return _off_loop(self._default_sources)

    def addresses(self) -> list[Address]:
        return _off_loop(self._addresses)

    def _default_sources(self) -> list[str | None]:
        from pyroute2 import IPRoute  # imported here: see _route
        from pyroute2.netlink.exceptions import NetlinkError

        sources: list[str | None] = []
        with IPRoute() as ipr:
            for _family, outside in OUTSIDE:
                try:
                    msg = ipr.route("get", dst=outside)[0]
                except NetlinkError:  # ENETUNREACH: no default route of this family
                    sources.append(None)
                    continue
                source = msg.get_attr("RTA_PREFSRC")
                sources.append(str(source) if source else None)
        return sources

    def _addresses(self) -> list[Address]:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME"))
                     for link in ipr.get_links()}
            found = [address_from_netlink(msg, names) for msg in ipr.get_addr()]
        return [addr for addr in found if addr is not None]

    def http_ok(self, host: str, port: int, path: str, timeout: float) -> bool:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("HEAD", path)
            return conn.getresponse().status == http.client.OK
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()


HOST_LOCAL_NET = HostLocalNet()


def host_ip(net: LocalNet = HOST_LOCAL_NET) -> str | None:
    """choose_ip over the host's routes and addresses (see there)."""
    return choose_ip(net.default_sources(), net.addresses)
