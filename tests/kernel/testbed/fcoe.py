"""Fibre Channel without an HBA: software FCoE in VN2VN mode over veth pairs.

Each link is a veth pair: the initiator end (fcA<n>) and the target end (fcB<n>)
each get an fcoe controller, hence a real fc_host. LIO's tcm_fc serves a target
port on every fcB<n>. The targets and their ACLs are configured while the
controllers are still disabled, so the first PRLI already sees an FCP target.
fcoe derives a port's WWPN from its MAC: 0x2000 followed by the MAC.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .lio import naa_wwid, set_t10
from .sh import run, wait_until, write

FC_HOST = Path("/sys/class/fc_host")
FC_RPORTS = Path("/sys/class/fc_remote_ports")
FCOE_BUS = Path("/sys/bus/fcoe")


@dataclass(frozen=True)
class FcLink:
    initiator_if: str
    target_if: str
    initiator_mac: str
    target_mac: str

    @property
    def initiator_wwpn(self) -> str:
        return "2000" + self.initiator_mac.replace(":", "")

    @property
    def target_wwpn(self) -> str:
        return "2000" + self.target_mac.replace(":", "")


def _links(count: int) -> list[FcLink]:
    return [FcLink(f"fcA{i}", f"fcB{i}", f"02:00:00:00:0a:{i:02x}", f"02:00:00:00:0b:{i:02x}")
            for i in range(1, count + 1)]


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def fc_host_of(wwpn: str) -> str | None:
    """The scsi host name (hostN) of the local FC port with this WWPN."""
    for host in FC_HOST.glob("host*"):
        if _read(host / "port_name") == "0x" + wwpn:
            return host.name
    return None


def rport(host: str, wwpn: str) -> Path | None:
    """The remote port with this WWPN as seen from local port `host`."""
    for port in FC_RPORTS.glob(f"rport-{host[4:]}:*"):
        if _read(port / "port_name") == "0x" + wwpn:
            return port
    return None


def fc_state() -> str:
    """fc_hosts, remote ports and the kernel's last FC words, for failure messages."""
    lines = []
    for obj, attrs in ((FC_HOST, ("port_name", "port_state", "symbolic_name")),
                       (FC_RPORTS, ("port_name", "roles", "port_state", "scsi_target_id"))):
        for node in sorted(obj.glob("*")):
            lines.append(f"{node.name}: " + " ".join(f"{a}={_read(node / a)}" for a in attrs))
    dmesg = run(["dmesg"], ok=(0, 1)).stdout.splitlines()
    lines += [line for line in dmesg if "fc" in line.lower() or "host" in line][-15:]
    return "\n".join(lines)


class FcFabric:
    """Links and tcm_fc target ports, built once per test session."""

    def __init__(self, links: int = 2) -> None:
        self.links = _links(links)

    def start(self) -> None:
        from rtslib_fb import TPG, FabricModule, NodeACL, Target

        for module in ("veth", "fcoe", "tcm_fc", "target_core_iblock"):
            run(["modprobe", module])
        for link in self.links:
            # The MACs (hence the WWPNs) are given at creation: set afterwards, udev's
            # MACAddressPolicy=persistent could overwrite one, racing with us.
            run(["ip", "link", "add", link.initiator_if, "address", link.initiator_mac,
                 "type", "veth", "peer", "name", link.target_if, "address", link.target_mac])
            for ifname, mac in ((link.initiator_if, link.initiator_mac),
                                (link.target_if, link.target_mac)):
                run(["ip", "link", "set", ifname, "mtu", "9000", "up"])
                current = Path(f"/sys/class/net/{ifname}/address").read_text().strip()
                assert current == mac, f"{ifname} has MAC {current}, not {mac}"
            # Target end first: its fc_host must exist before tcm_fc can claim it.
            write(FCOE_BUS / "ctlr_create", link.target_if)
            write(FCOE_BUS / "ctlr_create", link.initiator_if)
        fabric = FabricModule("tcm_fc")
        for link in self.links:
            target = Target(fabric, "naa." + link.target_wwpn, mode="create")
            tpg = TPG(target, 1, mode="create")
            NodeACL(tpg, "naa." + link.initiator_wwpn, mode="create")
        # Target ends first, as in TESTBED.md: the initiator's first PRLI must
        # find an FCP target already listening.
        ctlrs = {ctlr.resolve().parent.name: ctlr for ctlr in FCOE_BUS.glob("devices/ctlr_*")}
        for ifname in [link.target_if for link in self.links] + \
                [link.initiator_if for link in self.links]:
            write(ctlrs[ifname] / "mode", "vn2vn")
            write(ctlrs[ifname] / "enabled", "1")
        for link in self.links:
            self.wait_online(link)

    def wait_online(self, link: FcLink, timeout: float = 90) -> Path:
        def ready() -> Path | None:
            host = fc_host_of(link.initiator_wwpn)
            port = rport(host, link.target_wwpn) if host else None
            if port and "FCP Target" in _read(port / "roles") and \
                    _read(port / "port_state") == "Online":
                return port
            return None
        try:
            return wait_until(ready, timeout=timeout,
                              what=f"FC target {link.target_wwpn} Online on {link.initiator_if}")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{fc_state()}") from None

    def initiator_host(self, link: FcLink) -> str:
        host = fc_host_of(link.initiator_wwpn)
        assert host, f"no fc_host for {link.initiator_if}"
        return host

    def tpg(self, link: FcLink) -> Any:
        from rtslib_fb import TPG, FabricModule, Target

        return TPG(Target(FabricModule("tcm_fc"), "naa." + link.target_wwpn), 1)

    def stop(self) -> None:
        from rtslib_fb import FabricModule, Target

        fabric = FabricModule("tcm_fc")
        for link in self.links:
            Target(fabric, "naa." + link.target_wwpn).delete()
        for link in self.links:
            write(FCOE_BUS / "ctlr_destroy", link.initiator_if)
            write(FCOE_BUS / "ctlr_destroy", link.target_if)
            run(["ip", "link", "del", link.initiator_if])


@dataclass
class FcExport:
    name: str
    lun: int
    wwid: str
    backing: Path
    loop: str
    connection_info: dict[str, Any]
    _so: Any = field(repr=False, default=None)


class FcArray:
    """Kaminario K2 over FC: every target port exports each LUN to every link."""

    def __init__(self, fabric: FcFabric, workdir: Path) -> None:
        self.fabric = fabric
        self.workdir = workdir
        self.exports: list[FcExport] = []

    def export(self, *, size_mb: int = 32, lun: int | None = None) -> FcExport:
        from rtslib_fb import LUN, BlockStorageObject, MappedLUN, NodeACL

        if lun is None:
            used = {e.lun for e in self.exports}
            lun = next(i for i in range(1, 16384) if i not in used)
        name = f"k2fc-{secrets.token_hex(4)}"
        backing = self.workdir / f"{name}.img"
        run(["truncate", "-s", f"{size_mb}M", str(backing)])
        loop = run(["losetup", "--find", "--show", str(backing)]).stdout.strip()
        serial = str(uuid.uuid4())
        so = BlockStorageObject(name, dev=loop, wwn=serial)
        set_t10(so.path, "KMNRIO", "K2")
        for link in self.fabric.links:
            tpg = self.fabric.tpg(link)
            tpg_lun = LUN(tpg, lun=lun, storage_object=so)
            MappedLUN(NodeACL(tpg, "naa." + link.initiator_wwpn), lun, tpg_lun)
        targets = [link.target_wwpn for link in self.fabric.links]
        info = {
            "driver_volume_type": "fibre_channel",
            "data": {
                "target_discovered": True,
                "target_lun": lun,
                "target_wwn": targets,
                "initiator_target_map": {
                    link.initiator_wwpn: list(targets) for link in self.fabric.links
                },
            },
        }
        export = FcExport(name, lun, naa_wwid(serial), backing, loop, info, so)
        self.exports.append(export)
        return export

    def unexport(self, export: FcExport) -> None:
        for link in self.fabric.links:
            for lun in self.fabric.tpg(link).luns:
                if lun.lun == export.lun:
                    lun.delete()
        export._so.delete()
        run(["losetup", "-d", export.loop])
        export.backing.unlink(missing_ok=True)
        self.exports.remove(export)

    def close(self) -> None:
        for export in list(self.exports):
            self.unexport(export)
