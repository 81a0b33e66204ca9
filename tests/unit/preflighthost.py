"""A prepared node for preflight and multipath-configuration tests: a HostFS tree
under tmp_path, a scripted executor, a multipathd and a network that answer."""

from __future__ import annotations

import os
from pathlib import Path

from hostagent.errors import DaemonUnavailable
from hostagent.host.fs import HostFS
from hostagent.host.net import Route
from hostagent.node.mpathconf import MultipathConfig
from hostagent.node.preflight import Preflight
from hostagent.node.udevrule import UdevRule
from tests.unit.fakes import FakeExecutor, FakeLocalNet

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "guest"
MULTIPATH_T_BUILTIN = (FIXTURES / "multipath_t_builtin.txt").read_text()
# `multipath -t` in the guest (its test-bed multipath.conf: polling_interval 2,
# no_path_retry 6) with hostagent's stanzas installed, and a node prepared as
# preflight's remedies say: that and `defaults { checker_timeout 5 }` in a conf.d file.
MULTIPATH_T_INSTALLED = (FIXTURES / "multipath_t_installed.txt").read_text()
MULTIPATH_T_STANZAS = (FIXTURES / "multipath_t_installed_checker_timeout.txt").read_text()
IQN = "iqn.2026-11.org.hostagent.test:initiator"
GOOD_ISCSID = ("node.session.timeo.replacement_timeout = 5\n"
               "node.conn[0].timeo.noop_out_interval = 2\n"
               "node.conn[0].timeo.noop_out_timeout = 2\n")
TOOLS = ("/usr/sbin/iscsiadm", "/usr/sbin/multipath", "/usr/sbin/multipathd",
         "/usr/bin/udevadm", "/usr/sbin/blockdev", "/usr/bin/sg_inq")


class StatusMultipathd:
    """multipathd as preflight and install see it: it answers "show status" and
    "reconfigure", or is stopped (fakehost.FakeMultipathd is the one that builds maps)."""

    def __init__(self) -> None:
        self.running = True
        self.commands: list[str] = []

    async def command(self, cmd: str, *, timeout: float) -> str:
        self.commands.append(cmd)
        if not self.running:
            raise DaemonUnavailable("multipathd is not running or refuses us: [Errno 111]")
        if cmd in ("show status", "reconfigure"):
            return "ok\n" if cmd == "reconfigure" else "path checkers states:\nup 2\n"
        raise AssertionError(f"unexpected multipathd command: {cmd}")


class FakeNet:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.refused: set[str] = set()
        self.connects: list[tuple[str, int]] = []

    async def connect(self, host: str, port: int, timeout: float) -> None:
        self.connects.append((host, port))
        if host in self.refused:
            raise TimeoutError()

    async def route(self, host: str) -> Route:
        if host not in self.routes:
            raise OSError(101, f"no route to {host}: Network is unreachable")
        return self.routes[host]


class Node:
    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "node"
        self.fs = HostFS(self.root)
        self.executor = FakeExecutor()
        self.mpd = StatusMultipathd()
        self.net = FakeNet()
        for tool in TOOLS:
            self.write(tool, "#!/bin/sh\n", mode=0o755)
        for module in ("iscsi_tcp", "dm_multipath", "scsi_transport_fc"):
            (self.root / "sys/module" / module).mkdir(parents=True)
        self.write("/etc/iscsi/initiatorname.iscsi", f"InitiatorName={IQN}\n")
        self.write("/etc/iscsi/iscsid.conf", GOOD_ISCSID)
        self.write("/etc/multipath.conf", "defaults {\n\tuser_friendly_names no\n}\n")
        self.mpconf = MultipathConfig(self.fs, self.executor, self.mpd)
        self.local = FakeLocalNet()  # a default route from 192.0.2.2
        self.udev = UdevRule(self.fs, self.executor)
        self.preflight = Preflight(self.fs, self.executor, self.mpd, self.net, self.mpconf,
                                   self.udev, local=self.local)

    def write(self, host_path: str, text: str, mode: int = 0o644) -> None:
        path = self.root / host_path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)

    def expect_checks(self, multipath_t: str = MULTIPATH_T_STANZAS,
                      iscsiadm_rc: int = 21) -> None:
        """The commands one preflight run makes (modules are loaded: no modprobe)."""
        self.executor.expect(["iscsiadm", "-m", "session"], returncode=iscsiadm_rc,
                             stderr="" if iscsiadm_rc in (0, 21) else
                             "iscsiadm: can not connect to iSCSI daemon (111)!")
        self.executor.expect(["multipath", "-t"], stdout=multipath_t)

    def add_portal(self, ip: str, ifname: str = "eth1", mtu: int = 9000, up: bool = True
                   ) -> str:
        self.net.routes[ip] = Route(ip, ifname, up, "10.0.0.1", mtu)
        return ip
