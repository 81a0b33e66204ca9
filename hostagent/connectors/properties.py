"""The connector the controller sees (GET /v1/connector): what os-brick 7.1.1's
get_connector_properties returns, computed without starting a process or writing a
file. The engines add their transport's keys (iSCSI `initiator`, FC `wwpns`/`wwnns`)
to host_properties()."""

from __future__ import annotations

import platform
import posixpath
import re
import socket
import sys
from collections.abc import Sequence
from socket import AF_INET, AF_INET6
from typing import Any

from hostagent.host.fs import (
    BIN_DIRS,
    DEV,
    ETC_NVME,
    PROC,
    SYS_CLASS,
    SYS_MODULE,
    UDEV_DB,
    HostFS,
)
from hostagent.host.net import HOST_LOCAL_NET, Address, LocalNet, getifaddrs_order, host_ip

# What os-brick 7.1.1's get_connector_properties(root_helper, my_ip, multipath,
# enforce_multipath) returns on Linux x86_64, read from the same files without
# starting a process and without writing any (os-brick runs findmnt, blkid, cat,
# `nvme version`, dmidecode, and writes /etc/nvme/hostnqn and hostid when missing).
# The transport parts (iSCSI `initiator`, FC `wwpns`/`wwnns`) are the engines'.
#
# Left out or different, on purpose (tests/kernel/test_connector_props.py checks
# exactly these, against os-brick in the guest):
# - `nqn`, `nvme_hostid` (and LightOS's `found_dsc`, `host_ips`, which os-brick only
#   reports with an nqn): read from /etc/nvme/hostnqn and hostid when they exist.
#   Where nvme-cli is installed and a file is missing, os-brick writes it (the nqn
#   from the DMI system UUID or `nvme gen-hostnqn`, the hostid from the system UUID
#   or a random UUID) and reports it; hostagent writes nothing on the host and
#   reports neither, rather than an identity the host does not have yet. An operator
#   who wants them creates the files once (`nvme gen-hostnqn > /etc/nvme/hostnqn`,
#   `uuidgen > /etc/nvme/hostid`).
# - `system uuid`: /sys/class/dmi/id/product_uuid; where the kernel has none, os-brick
#   runs dmidecode, hostagent leaves the key out.
# - `uuid` (the root file system's UUID): os-brick runs findmnt and blkid (which
#   probes the device); hostagent takes the root mount's source from mountinfo and
#   the UUID udev's blkid builtin recorded for that device, so it is left out where
#   udev keeps no record (a host without udev).
# - `sdc_guid` (Dell PowerFlex): os-brick asks the SDC driver by an ioctl on
#   /dev/scini; hostagent serves no PowerFlex volumes and sends no ioctl to a driver
#   it knows nothing of: never reported (a PowerFlex driver then refuses this host,
#   which is right, as hostagent could not attach its volumes).
# - `ip`: os-brick reports the my_ip it is given (nova: CONF.my_ip, by default
#   oslo.utils' get_my_ipv4(), which is 127.0.0.1 on a host without a default route);
#   hostagent reports [DEFAULT] my_ip, else its own choice, never loopback (host.net.
#   choose_ip): the same value wherever there is a default route; None (JSON null)
#   when the host has no address but loopback and link-local ones.
# - `found_dsc`: os-brick's HEAD to its LightOS discovery client, at the defaults of
#   its [os_brick] lightos_discovery_client_* options (hostagent reads no os-brick
#   configuration) and with a 1 s timeout where os-brick has none.
# - `multipath` and `enforce_multipath` are what os-brick reports too: the values it is
#   given (os-brick 7.1.1 does not check that multipathd runs). `multipath` is the
#   agent's [DEFAULT] multipath; `enforce_multipath` is False.
# Computed at each request: a changed route or a new HBA shows at once (os-brick
# caches `nvme_native_multipath` and IPv6's state per process).

NVME_HOSTNQN = f"{ETC_NVME}/hostnqn"
NVME_HOSTID = f"{ETC_NVME}/hostid"
DMI_PRODUCT_UUID = f"{SYS_CLASS}/dmi/id/product_uuid"
NVME_NATIVE_MULTIPATH = f"{SYS_MODULE}/nvme_core/parameters/multipath"
MOUNTINFO = f"{PROC}/self/mountinfo"
IPV6_DISABLED = f"{PROC}/sys/net/ipv6/conf/default/disable_ipv6"
# os-brick's [os_brick] lightos_discovery_client_address / _port defaults; its request
# has no timeout, ours a short one.
LIGHTOS_DSC = ("localhost", 6060, "/metrics")
LIGHTOS_DSC_TIMEOUT = 1.0
_OCTAL = re.compile(r"\\([0-7]{3})")


def host_properties(fs: HostFS, *, multipath: bool, my_ip: str | None,
                    net: LocalNet = HOST_LOCAL_NET) -> dict[str, Any]:
    """The transport-neutral part of os-brick's get_connector_properties (see above):
    its generic keys, RBD's `do_local_attach`, NVMe-oF's and LightOS's."""
    props: dict[str, Any] = {
        "platform": platform.machine(),
        "os_type": sys.platform,
        "ip": my_ip or host_ip(net),
        "host": socket.gethostname(),
        "multipath": multipath,
        "enforce_multipath": False,
        "do_local_attach": False,
    }
    nqn = fs.try_read(NVME_HOSTNQN)
    if nvme_cli_present(fs) and (hostid := fs.try_read(NVME_HOSTID)):
        props["nvme_hostid"] = hostid
    if uuid := root_fs_uuid(fs):
        props["uuid"] = uuid
    if system_uuid := fs.try_read(DMI_PRODUCT_UUID):
        props["system uuid"] = system_uuid
    if nqn:
        props["nqn"] = nqn
    props["nvme_native_multipath"] = fs.try_read(NVME_NATIVE_MULTIPATH) == "Y"
    if nqn:  # LightOS reports these only with an nqn
        host, port, path = LIGHTOS_DSC
        props["found_dsc"] = "found" if net.http_ok(host, port, path,
                                                    LIGHTOS_DSC_TIMEOUT) else ""
        props["host_ips"] = host_ips(net.addresses(),
                                     ipv6=fs.try_read(IPV6_DISABLED) == "0")
    return props


def iscsi_initiator(text: str | None) -> str | None:
    """The initiator name os-brick reads from initiatorname.iscsi: the value of the first
    line that starts with `InitiatorName=`; None if there is none or it is empty."""
    for line in (text or "").split("\n"):
        if line.startswith("InitiatorName="):
            return line[len("InitiatorName="):].strip() or None
    return None


_GOLDEN_RATIO_64 = 0x61C8864680B583EB  # linux/hash.h
_U64 = (1 << 64) - 1


def sysfs_order(name: str) -> tuple[int, str]:
    """The sort key that gives a sysfs directory's entries in the order the kernel lists
    them (readdir), the order os-brick's glob keeps: kernfs keeps a directory's children
    by kernfs_name_hash(name) (fs/kernfs/dir.c, no namespace), then by name. HostFS.listdir
    sorts by name instead, and a test tree's own readdir order is its file system's."""
    value = 0
    for c in name.encode():
        value = ((value + (c << 4) + (c >> 4)) * 11) & _U64  # partial_name_hash
    value = ((value * _GOLDEN_RATIO_64) & _U64) >> 32  # end_name_hash: hash_long(, 32)
    value &= 0x7FFFFFFF
    return min(max(value, 2), 0x7FFFFFFE), name  # 0, 1 and INT_MAX are reserved


def nvme_cli_present(fs: HostFS) -> bool:
    """os-brick runs `nvme version`; here: an nvme executable where systemd looks."""
    return any(fs.is_executable(f"{d}/nvme") for d in BIN_DIRS)


def host_ips(addresses: Sequence[Address], *, ipv6: bool) -> list[str]:
    """LightOS's host_ips: every address in psutil's order but those of the interface
    named `lo`; IPv6 ones only while IPv6 is enabled by default (disable_ipv6 0)."""
    return [a.address for a in getifaddrs_order(addresses) if a.name != "lo"
            and (a.family == AF_INET or (ipv6 and a.family == AF_INET6))]


def root_fs_uuid(fs: HostFS) -> str | None:
    """The UUID of the file system mounted on / (os-brick: `findmnt -v / -n -o SOURCE`,
    then `blkid SOURCE -s UUID -o value`): the root mount's source as mountinfo names
    it, a block device, and the ID_FS_UUID udev recorded for it. None for an overlay,
    a network or virtual file system, or a device udev has no UUID of."""
    source = root_mount_source(fs.try_read(MOUNTINFO) or "")
    if not source or not source.startswith("/"):
        return None
    device = fs.realpath(source)
    if not device.startswith(f"{DEV}/"):
        return None
    devno = fs.try_read(f"{SYS_CLASS}/block/{posixpath.basename(device)}/dev")
    if not devno:
        return None
    for line in (fs.try_read(f"{UDEV_DB}/b{devno}") or "").splitlines():
        if line.startswith("E:ID_FS_UUID="):
            return line.removeprefix("E:ID_FS_UUID=") or None
    return None


def root_mount_source(mountinfo: str) -> str | None:
    """The source of the last mount on / in a mountinfo text (the one findmnt shows)."""
    source = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if len(fields) > sep + 2 and _unescape(fields[4]) == "/":
            source = _unescape(fields[sep + 2])
    return source


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (\\040 for a space) undone."""
    return _OCTAL.sub(lambda m: chr(int(m[1], 8)), field)
