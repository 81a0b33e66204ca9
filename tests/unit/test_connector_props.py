"""The connector the controller sees (GET /v1/connector): os-brick 7.1.1's keys and
values, read from a HostFS tree and a fake of the host's own network; `ip` never
loopback. tests/kernel/test_connector_props.py compares it with os-brick itself."""

from __future__ import annotations

import os
import platform
import socket
import sys
from pathlib import Path
from socket import AF_INET, AF_INET6
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from hostagent.agent.daemon import build
from hostagent.config import Config
from hostagent.connectors.properties import (
    host_ips,
    host_properties,
    iscsi_initiator,
    root_fs_uuid,
    root_mount_source,
    sysfs_order,
)
from hostagent.host.fs import HostFS
from hostagent.host.net import (
    IFA_F_DADFAILED,
    IFA_F_TENTATIVE,
    Address,
    address_from_netlink,
    choose_ip,
    getifaddrs_order,
    host_ip,
    is_loopback,
)
from tests.unit import fchost, iscsihost
from tests.unit.fakes import DUMP, HOST_SCOPE, LINK_SCOPE, FakeLocalNet

ROOT_UUID = "0b9f7c1e-4d57-4a3c-9d0e-6a1c2b3d4e5f"
SYSTEM_UUID = "5d1c6a36-8f2b-4c0e-9a7d-3e2f1b0c9d8e"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:" + SYSTEM_UUID
HOSTID = "9e8d7c6b-5a49-4382-a716-0f1e2d3c4b5a"


class Tree:
    """A host's files under tmp_path, written where os-brick reads them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fs = HostFS(root)

    def write(self, host_path: str, text: str) -> None:
        path = self.fs.path(host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def link(self, host_path: str, target: str) -> None:
        path = self.fs.path(host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)

    def nvme_cli(self) -> None:
        self.write("/usr/sbin/nvme", "#!/bin/sh\n")
        os.chmod(self.fs.path("/usr/sbin/nvme"), 0o755)

    def root_on(self, source: str, fstype: str = "ext4") -> None:
        self.write("/proc/self/mountinfo",
                   "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
                   f"25 1 254:1 / / rw,relatime shared:1 - {fstype} {source} rw\n"
                   "26 25 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw\n")

    def lvm_root(self) -> None:
        """/ on /dev/mapper/vg-root (dm-1, 254:1), which udev recorded with its UUID."""
        self.root_on("/dev/mapper/vg-root")
        self.write("/dev/dm-1", "")
        self.link("/dev/mapper/vg-root", "../dm-1")
        self.write("/sys/class/block/dm-1/dev", "254:1\n")
        self.write("/run/udev/data/b254:1",
                   f"S:mapper/vg-root\nE:ID_FS_TYPE=ext4\nE:ID_FS_UUID={ROOT_UUID}\n"
                   f"E:ID_FS_UUID_ENC={ROOT_UUID}\nG:systemd\n")

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*"))


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path / "host")


def base_keys(ip: str = "192.0.2.2", multipath: bool = True) -> dict[str, Any]:
    return {"platform": platform.machine(), "os_type": sys.platform, "ip": ip,
            "host": socket.gethostname(), "multipath": multipath,
            "enforce_multipath": False, "do_local_attach": False,
            "nvme_native_multipath": False}


# ---- is_loopback ----------------------------------------------------------------------

@pytest.mark.parametrize("ip", ["127.0.0.1", "127.0.1.1", "127.255.255.254", "::1",
                                "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1"])
def test_loopback_addresses(ip: str) -> None:
    assert is_loopback(ip)


@pytest.mark.parametrize("ip", ["10.0.0.1", "192.0.2.2", "128.0.0.1", "::2", "fe80::1%eth0",
                                "::ffff:10.0.0.1", "", None, "localhost", "127.0.0"])
def test_not_loopback(ip: str | None) -> None:
    assert not is_loopback(ip)


# ---- ip: the default route's source, never loopback --------------------------------

def _no_addresses() -> list[Address]:
    raise AssertionError("the addresses are not needed when a default route gives a source")


def test_the_ipv4_default_routes_source_wins() -> None:
    assert choose_ip(["192.0.2.2", "2001:db8::2"], _no_addresses) == "192.0.2.2"


def test_the_ipv6_default_routes_source_without_an_ipv4_one() -> None:
    assert choose_ip([None, "2001:db8::2"], _no_addresses) == "2001:db8::2"


def test_a_loopback_source_is_passed_over() -> None:
    # A default route via lo (seen on hosts whose only route is a blackhole-ish default).
    assert choose_ip(["127.0.0.1", "2001:db8::2"], _no_addresses) == "2001:db8::2"


def test_without_a_default_route_the_first_global_address() -> None:
    dump = [
        Address("lo", AF_INET, "127.0.0.1", HOST_SCOPE),
        Address("lo", AF_INET, "10.9.9.9"),  # global scope, but a loopback interface's
        Address("eth0", AF_INET, "169.254.3.4", LINK_SCOPE),
        Address("eth0", AF_INET6, "2001:db8::5"),
        Address("eth1", AF_INET, "10.1.2.3"),
        Address("eth2", AF_INET, "10.4.5.6"),
    ]
    # IPv4 before IPv6, each in dump order; a global address on lo is still this host's.
    assert choose_ip([None, None], lambda: dump) == "10.9.9.9"
    assert choose_ip([None, None], lambda: dump[2:]) == "10.1.2.3"
    assert choose_ip([None, None], lambda: dump[2:4]) == "2001:db8::5"


def test_an_address_not_yet_usable_is_passed_over() -> None:
    dump = [Address("eth0", AF_INET6, "2001:db8::5", flags=IFA_F_TENTATIVE),
            Address("eth0", AF_INET6, "2001:db8::6", flags=IFA_F_DADFAILED),
            Address("eth0", AF_INET6, "2001:db8::7", flags=0x80)]  # IFA_F_PERMANENT
    assert choose_ip([None, None], lambda: dump) == "2001:db8::7"


def test_only_loopback_and_link_local_addresses_give_none() -> None:
    dump = [Address("lo", AF_INET, "127.0.0.1", HOST_SCOPE), Address("lo", AF_INET6, "::1"),
            Address("eth0", AF_INET6, "fe80::1", LINK_SCOPE)]
    assert choose_ip([None, None], lambda: dump) is None
    assert choose_ip(["127.0.0.1", None], lambda: []) is None


def test_host_ip_asks_the_routes_first() -> None:
    net = FakeLocalNet(sources=["10.0.0.7", None])
    assert host_ip(net) == "10.0.0.7" and net.asked == ["default_sources"]
    net = FakeLocalNet(sources=[None, None])
    assert host_ip(net) == "192.0.2.2" and net.asked == ["default_sources", "addresses"]


# ---- addresses as netlink and psutil give them -----------------------------------------

def _ifaddr(family: int, index: int, attrs: list[tuple[str, Any]], scope: int = 0,
            flags: int = 0) -> ifaddrmsg:
    msg = ifaddrmsg()
    msg["family"], msg["index"], msg["scope"], msg["flags"] = family, index, scope, flags
    msg["attrs"] = attrs
    return msg


def test_an_address_from_netlink_as_getifaddrs_names_it() -> None:
    names = {1: "lo", 4: "eth0"}
    labelled = _ifaddr(AF_INET, 4, [("IFA_ADDRESS", "10.0.0.9"), ("IFA_LOCAL", "10.0.0.9"),
                                    ("IFA_LABEL", "eth0:1"), ("IFA_FLAGS", 0x80)])
    assert address_from_netlink(labelled, names) == Address("eth0:1", AF_INET, "10.0.0.9", 0,
                                                            0x80)
    # A point-to-point IPv4 address: IFA_ADDRESS is the peer, IFA_LOCAL this host's.
    ptp = _ifaddr(AF_INET, 4, [("IFA_ADDRESS", "10.8.0.1"), ("IFA_LOCAL", "10.8.0.2")])
    assert address_from_netlink(ptp, names) == Address("eth0", AF_INET, "10.8.0.2")
    # IPv6 has no labels: the link's name; the flags from the header without IFA_FLAGS.
    v6 = _ifaddr(AF_INET6, 4, [("IFA_ADDRESS", "fe80::fc:ff:fe00:1")], scope=LINK_SCOPE,
                 flags=IFA_F_TENTATIVE)
    assert address_from_netlink(v6, names) == Address("eth0", AF_INET6, "fe80::fc:ff:fe00:1",
                                                      LINK_SCOPE, IFA_F_TENTATIVE)
    assert address_from_netlink(_ifaddr(17, 4, []), names) is None  # AF_PACKET: no address


def test_psutils_order_is_by_family_then_by_first_appearance_of_the_name() -> None:
    dump = [
        Address("lo", AF_INET, "127.0.0.1"),
        Address("eth1", AF_INET, "10.1.0.2"),
        Address("eth0:1", AF_INET, "10.0.1.2"),
        Address("eth0", AF_INET6, "2001:db8::2"),  # eth0 first appears with IPv6
        Address("eth1", AF_INET6, "fe80::1"),
        Address("lo", AF_INET6, "::1"),
        Address("eth1", AF_INET, "10.1.0.3"),  # dump order within a family is kept
    ]
    assert [(a.name, a.address) for a in getifaddrs_order(dump)] == [
        ("lo", "127.0.0.1"), ("lo", "::1"),
        ("eth1", "10.1.0.2"), ("eth1", "10.1.0.3"), ("eth1", "fe80::1"),
        ("eth0:1", "10.0.1.2"), ("eth0", "2001:db8::2")]


def test_lightos_host_ips_leave_out_lo_and_ipv6_when_disabled() -> None:
    assert host_ips(DUMP, ipv6=True) == ["192.0.2.2", "fd00::2", "fe80::fc:ff:fe00:1"]
    assert host_ips(DUMP, ipv6=False) == ["192.0.2.2"]
    # Only the interface named lo: an alias label of lo is not lo (as in os-brick).
    assert host_ips([Address("lo:1", AF_INET, "127.0.0.2")], ipv6=True) == ["127.0.0.2"]


# ---- iSCSI initiator as os-brick parses it -----------------------------------------------

@pytest.mark.parametrize(("text", "initiator"), [
    ("InitiatorName=iqn.1993-08.org.debian:01:abc\n", "iqn.1993-08.org.debian:01:abc"),
    ("## DO NOT EDIT\n#InitiatorName=iqn.x:old\nInitiatorName=iqn.x:new  \n", "iqn.x:new"),
    ("InitiatorName=iqn.x:a\nInitiatorName=iqn.x:b\n", "iqn.x:a"),  # the first one
    ("InitiatorName=\nInitiatorName=iqn.x:b\n", None),  # the first one, even empty
    ("  InitiatorName=iqn.x:a\n", None),  # must start the line
    ("InitiatorName = iqn.x:a\n", None),  # no spaces around =
    ("InitiatorName=iqn.x:a=b\n", "iqn.x:a=b"),
    ("", None), (None, None),
])
def test_the_initiator_as_os_brick_reads_it(text: str | None, initiator: str | None) -> None:
    assert iscsi_initiator(text) == initiator


# ---- the root file system's uuid ---------------------------------------------------------

def test_root_mount_source_takes_the_last_mount_on_root() -> None:
    info = ("1 0 0:1 / / rw - rootfs rootfs rw\n"
            "25 1 8:2 / / rw,relatime shared:1 master:3 - ext4 /dev/sda2 rw\n"
            "26 25 8:3 / /srv rw - xfs /dev/sda3 rw\n")
    assert root_mount_source(info) == "/dev/sda2"
    assert root_mount_source("30 1 0:40 / /mnt\\040x rw - ext4 /dev/my\\040disk rw\n") is None
    assert root_mount_source("30 1 0:40 / / rw - ext4 /dev/my\\040disk rw\n") == "/dev/my disk"
    assert root_mount_source("garbage\n\n") is None


def test_the_root_uuid_is_udevs_record_of_the_root_device(tree: Tree) -> None:
    tree.lvm_root()
    assert root_fs_uuid(tree.fs) == ROOT_UUID


@pytest.mark.parametrize(("source", "fstype"), [
    ("overlay", "overlay"), ("ROOTFS", "virtiofs"), ("/dev/root", "9p"),
    ("server:/export", "nfs4"), ("rpool/ROOT/debian", "zfs"),
])
def test_no_root_uuid_without_a_block_device(tree: Tree, source: str, fstype: str) -> None:
    tree.root_on(source, fstype)
    assert root_fs_uuid(tree.fs) is None


def test_no_root_uuid_without_udevs_record(tree: Tree) -> None:
    tree.lvm_root()
    tree.write("/run/udev/data/b254:1", "S:mapper/vg-root\nE:ID_FS_TYPE=ext4\n")
    assert root_fs_uuid(tree.fs) is None
    tree.fs.path("/run/udev/data/b254:1").unlink()
    assert root_fs_uuid(tree.fs) is None


# ---- host_properties: the keys --------------------------------------------------------------

def test_a_bare_host_has_os_bricks_generic_keys(tree: Tree) -> None:
    net = FakeLocalNet()
    assert host_properties(tree.fs, multipath=True, my_ip=None, net=net) == base_keys()
    assert net.asked == ["default_sources"]  # no nqn: no LightOS probe


def test_my_ip_is_reported_as_given_and_no_route_is_asked(tree: Tree) -> None:
    net = FakeLocalNet()
    props = host_properties(tree.fs, multipath=False, my_ip="10.20.30.40", net=net)
    assert props == base_keys("10.20.30.40", multipath=False) and net.asked == []


def test_no_address_at_all_is_reported_as_none(tree: Tree) -> None:
    net = FakeLocalNet(sources=[None, None], dump=[Address("lo", AF_INET, "127.0.0.1",
                                                           HOST_SCOPE)])
    assert host_properties(tree.fs, multipath=True, my_ip=None, net=net)["ip"] is None


def test_a_host_with_nvme_files_and_dmi(tree: Tree) -> None:
    tree.nvme_cli()
    tree.write("/etc/nvme/hostnqn", HOSTNQN + "\n")
    tree.write("/etc/nvme/hostid", HOSTID + "\n")
    tree.write("/sys/class/dmi/id/product_uuid", SYSTEM_UUID + "\n")
    tree.write("/sys/module/nvme_core/parameters/multipath", "Y\n")
    tree.write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "0\n")
    tree.lvm_root()
    net = FakeLocalNet(dsc=True)
    props = host_properties(tree.fs, multipath=True, my_ip=None, net=net)
    assert props == {**base_keys(), "nvme_hostid": HOSTID, "uuid": ROOT_UUID,
                     "system uuid": SYSTEM_UUID, "nqn": HOSTNQN, "nvme_native_multipath": True,
                     "found_dsc": "found",
                     "host_ips": ["192.0.2.2", "fd00::2", "fe80::fc:ff:fe00:1"]}
    assert net.asked == ["default_sources", "http localhost:6060/metrics 1.0", "addresses"]


def test_hostid_only_with_the_nvme_cli_and_nqn_without_it(tree: Tree) -> None:
    # os-brick's NVMe-oF part reads the hostid only when `nvme version` runs; its LightOS
    # part reads the hostnqn whether or not nvme-cli is there.
    tree.write("/etc/nvme/hostnqn", HOSTNQN + "\n")
    tree.write("/etc/nvme/hostid", HOSTID + "\n")
    tree.write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1\n")
    props = host_properties(tree.fs, multipath=True, my_ip=None, net=FakeLocalNet())
    assert "nvme_hostid" not in props
    assert (props["nqn"], props["found_dsc"], props["host_ips"]) == (HOSTNQN, "", ["192.0.2.2"])


def test_missing_or_empty_nvme_files_are_not_made_up(tree: Tree) -> None:
    # os-brick would write them (with nvme-cli present); hostagent reports neither.
    tree.nvme_cli()
    tree.write("/sys/class/dmi/id/product_uuid", SYSTEM_UUID + "\n")
    before = tree.files()
    props = host_properties(tree.fs, multipath=True, my_ip=None, net=FakeLocalNet())
    assert props == {**base_keys(), "system uuid": SYSTEM_UUID}
    assert tree.files() == before  # no /etc/nvme made
    tree.write("/etc/nvme/hostnqn", "\n")
    tree.write("/etc/nvme/hostid", "")
    props = host_properties(tree.fs, multipath=True, my_ip=None, net=FakeLocalNet())
    assert props == {**base_keys(), "system uuid": SYSTEM_UUID}


def test_nvme_native_multipath_is_only_y(tree: Tree) -> None:
    for value, expected in (("Y", True), ("N", False), ("1", False)):
        tree.write("/sys/module/nvme_core/parameters/multipath", value + "\n")
        props = host_properties(tree.fs, multipath=True, my_ip="10.0.0.1", net=FakeLocalNet())
        assert props["nvme_native_multipath"] is expected


# ---- the engines and the wiring ----------------------------------------------------------------

def test_the_iscsi_engine_adds_the_initiator(tmp_path: Path) -> None:
    host = iscsihost.Host(tmp_path)
    host.kernel.write("/etc/iscsi/initiatorname.iscsi",
                      "## comment\nInitiatorName=iqn.1993-08.org.debian:01:abc\n")
    host.connector.options = type(host.connector.options)(my_ip="10.0.0.5")
    props = host.connector.connector_properties(multipath=True)
    assert props == {**base_keys("10.0.0.5"), "initiator": "iqn.1993-08.org.debian:01:abc"}
    assert host.fs.writes == [] and host.executor.calls == []


def test_the_fc_engine_adds_online_ports(tmp_path: Path) -> None:
    host = fchost.Host(tmp_path, fchost.FcOptions(my_ip="10.0.0.5"))
    host.hba(fchost.I1)
    host.hba(fchost.I2, state="Linkdown")
    host.hba(fchost.I3)
    props = host.connector.connector_properties(multipath=False)
    # host3, host4, host5: sysfs lists host5 before host3, and so does os-brick.
    assert props == {**base_keys("10.0.0.5", multipath=False),
                     "wwpns": [fchost.I3, fchost.I1],
                     "wwnns": ["1000" + fchost.I3[4:], "1000" + fchost.I1[4:]]}
    assert host.fs.writes == []


def test_sysfs_order_is_the_kernels_readdir_order() -> None:
    # As Linux 6.1 listed /sys/class/fc_host in the guest, and as it lists SCSI hosts.
    names = [f"host{n}" for n in range(8)]
    assert sorted(names, key=sysfs_order) == [
        "host7", "host5", "host3", "host1", "host6", "host4", "host2", "host0"]
    assert sorted(["host3", "host4"], key=sysfs_order) == ["host3", "host4"]


@pytest.mark.parametrize("directory", ["/sys/module", "/sys/class/block", "/sys/kernel"])
def test_sysfs_order_matches_this_hosts_sysfs(directory: str) -> None:
    if not os.path.isdir(directory):
        pytest.skip(f"no {directory} here")
    listed = os.listdir(directory)
    assert listed == sorted(listed, key=sysfs_order)


def test_the_daemon_hands_my_ip_to_both_engines(tmp_path: Path) -> None:
    cfg = Config(state_dir=str(tmp_path / "state"), lock_path=str(tmp_path / "locks"),
                 my_ip="10.11.12.13")
    agent = build(cfg, HostFS(tmp_path / "host"))
    try:
        assert agent.service.connector_properties()["ip"] == "10.11.12.13"
        for connector in agent.service.connectors.values():
            assert connector.connector_properties(multipath=True)["ip"] == "10.11.12.13"
    finally:
        agent.store.close()
