"""An LIO iSCSI array played through rtslib-fb, in two personalities.

Datera DSP: one target IQN per volume, LUN 0, T10 vendor DATERA / product IBLOCK.
Kaminario K2: ONE system IQN shared by all volumes, a LUN id per mapping (1, 2,
...), vendor KMNRIO / product K2. Each export returns the connection_info the
real Cinder driver sends (cinder/volume/drivers/datera/datera_api22.py and
kaminario/kaminario_iscsi.py). Volumes are iblock backstores over loop devices
so that growing the backing file grows the LUN the way a real array does.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .guest import Guest
from .sh import run

ISCSI_PORT = 3260
K2_IQN_PREFIX = "iqn.2009-01.com.kaminario:storage.k2"
DATERA_IQN_PREFIX = "iqn.2013-05.com.daterainc:tc:01:sn"
LIO_OUI = "001405"  # LIO's IEEE company id in the NAA designator


class VendorRefused(RuntimeError):
    """The kernel would not take a T10 vendor or product id for a backstore."""


@dataclass(frozen=True)
class Chap:
    username: str
    password: str
    # Mutual CHAP: the target's own credentials, checked by the initiator.
    username_in: str | None = None
    password_in: str | None = None

    @classmethod
    def make(cls, *, mutual: bool = False) -> Chap:
        if not mutual:
            return cls("user" + secrets.token_hex(3), secrets.token_hex(8))
        return cls(
            "user" + secrets.token_hex(3), secrets.token_hex(8),
            "target" + secrets.token_hex(3), secrets.token_hex(8),
        )


def naa_wwid(unit_serial: str) -> str:
    """The WWID multipath sees for an LIO LUN: '3' + NAA 6 designator.

    LIO builds the designator from its company id and the first 25 hex digits
    of the backstore's unit serial (spc_gen_naa_6h_vendor_specific).
    """
    digits = "".join(c for c in unit_serial.lower() if c in "0123456789abcdef")
    return "36" + LIO_OUI + digits[:25]


@dataclass
class Export:
    name: str
    personality: str  # "datera" | "k2"
    iqn: str
    lun: int
    wwid: str
    backing: Path
    loop: str
    connection_info: dict[str, Any]
    _so: Any = field(repr=False, default=None)


class IscsiArray:
    def __init__(self, guest: Guest, *, portals: int, workdir: Path) -> None:
        from rtslib_fb import FabricModule

        if not 1 <= portals <= len(guest.portal_ips):
            raise ValueError(f"portals must be 1..{len(guest.portal_ips)}, got {portals}")
        self.portal_ips = guest.portal_ips[:portals]
        self.portals = [f"{ip}:{ISCSI_PORT}" for ip in self.portal_ips]
        self.initiator = guest.initiator_iqn
        self.workdir = workdir
        self.exports: list[Export] = []
        self.k2_iqn = f"{K2_IQN_PREFIX}.{secrets.token_hex(3)}"
        self._fabric = FabricModule("iscsi")
        self._targets: dict[str, Any] = {}
        self._discovery_chap: Chap | None = None

    # ---- exports -----------------------------------------------------------------
    def export_datera(self, *, size_mb: int = 64, chap: Chap | None = None,
                      multipath: bool = True) -> Export:
        iqn = f"{DATERA_IQN_PREFIX}:{secrets.token_hex(8)}"
        export = self._export(iqn, 0, "datera", ("DATERA", "IBLOCK"), size_mb, chap)
        data: dict[str, Any] = {
            "target_discovered": False,
            "target_iqn": iqn,
            "target_portal": self.portals[0],
            "target_lun": 0,
            "volume_id": export.name,
            "discard": False,
        }
        if multipath:
            n = len(self.portals)
            data.update(target_iqns=[iqn] * n, target_portals=list(self.portals),
                        target_luns=[0] * n)
        export.connection_info = self._with_auth(data, chap)
        return export

    def export_k2(self, *, size_mb: int = 64, chap: Chap | None = None,
                  lun: int | None = None, discovery: bool = True) -> Export:
        if lun is None:
            used = {e.lun for e in self.exports if e.iqn == self.k2_iqn}
            lun = next(i for i in range(1, 16384) if i not in used)
        export = self._export(self.k2_iqn, lun, "k2", ("KMNRIO", "K2"), size_mb, chap)
        data: dict[str, Any] = {
            "target_discovered": True,
            "target_portal": self.portals[0],
            "target_iqn": self.k2_iqn,
            "target_lun": lun,
        }
        if not discovery:  # the driver's disable_discovery option, with multipath
            n = len(self.portals)
            data.update(target_iqns=[self.k2_iqn] * n, target_portals=list(self.portals),
                        target_luns=[lun] * n)
        export.connection_info = self._with_auth(data, chap)
        return export

    def replace(self, old: Export, *, size_mb: int = 64) -> Export:
        """Unexport `old` and export a NEW backstore at the same target and LUN id."""
        self.unexport(old)
        if old.personality == "k2":
            return self.export_k2(size_mb=size_mb, lun=old.lun)
        export = self._export(old.iqn, 0, "datera", ("DATERA", "IBLOCK"), size_mb, None)
        export.connection_info = old.connection_info
        return export

    def unexport(self, export: Export) -> None:
        from rtslib_fb import TPG

        target = self._targets[export.iqn]
        tpg = TPG(target, 1)
        for lun in tpg.luns:
            if lun.lun == export.lun:
                lun.delete()  # also deletes the ACLs' mapped LUNs
        export._so.delete()
        run(["losetup", "-d", export.loop])
        export.backing.unlink(missing_ok=True)
        self.exports.remove(export)
        if not any(True for _ in tpg.luns):
            self._targets.pop(export.iqn).delete()

    def grow(self, export: Export, size_mb: int) -> None:
        run(["truncate", "-s", f"{size_mb}M", str(export.backing)])
        run(["losetup", "-c", export.loop])

    def set_discovery_chap(self, chap: Chap | None) -> dict[str, str]:
        """Enforce SendTargets CHAP; return the connection_info keys that carry it."""
        fm = self._fabric
        self._discovery_chap = chap
        if chap is None:
            fm.clear_discovery_auth_settings()
            return {}
        fm.discovery_userid, fm.discovery_password = chap.username, chap.password
        if chap.username_in:
            fm.discovery_mutual_userid = chap.username_in
            fm.discovery_mutual_password = chap.password_in
        fm.discovery_enable_auth = True
        keys = {"discovery_auth_method": "CHAP", "discovery_auth_username": chap.username,
                "discovery_auth_password": chap.password}
        if chap.username_in and chap.password_in:
            keys.update(discovery_auth_username_in=chap.username_in,
                        discovery_auth_password_in=chap.password_in)
        return keys

    def close(self) -> None:
        for export in list(self.exports):
            self.unexport(export)
        if self._discovery_chap is not None:
            self.set_discovery_chap(None)

    # ---- internals ---------------------------------------------------------------
    def _export(self, iqn: str, lun: int, personality: str, t10: tuple[str, str],
                size_mb: int, chap: Chap | None) -> Export:
        from rtslib_fb import LUN, BlockStorageObject, MappedLUN, NodeACL

        name = f"{personality}-{secrets.token_hex(4)}"
        backing = self.workdir / f"{name}.img"
        run(["truncate", "-s", f"{size_mb}M", str(backing)])
        loop = run(["losetup", "--find", "--show", str(backing)]).stdout.strip()
        serial = str(uuid.uuid4())
        so = BlockStorageObject(name, dev=loop, wwn=serial)
        try:
            set_t10(so.path, *t10)
        except VendorRefused:
            so.delete()
            run(["losetup", "-d", loop])
            backing.unlink()
            raise
        tpg = self._tpg(iqn, chap)
        tpg_lun = LUN(tpg, lun=lun, storage_object=so)
        acl = NodeACL(tpg, self.initiator)
        if chap is not None:
            acl.chap_userid, acl.chap_password = chap.username, chap.password
            if chap.username_in:
                acl.chap_mutual_userid = chap.username_in
                acl.chap_mutual_password = chap.password_in
        MappedLUN(acl, lun, tpg_lun)
        export = Export(name, personality, iqn, lun, naa_wwid(serial), backing, loop, {}, so)
        self.exports.append(export)
        return export

    def _tpg(self, iqn: str, chap: Chap | None) -> Any:
        from rtslib_fb import TPG, NetworkPortal, Target

        if iqn in self._targets:
            tpg = TPG(self._targets[iqn], 1)
        else:
            target = Target(self._fabric, iqn, mode="create")
            self._targets[iqn] = target
            tpg = TPG(target, 1, mode="create")
            tpg.set_attribute("generate_node_acls", "0")
            for ip in self.portal_ips:
                NetworkPortal(tpg, ip, ISCSI_PORT, mode="create")
            tpg.enable = True
        # LIO refuses a CHAP login (non-retryable, iscsiadm rc 19) unless the TPG
        # enforces authentication; without CHAP it must be off.
        tpg.set_attribute("authentication", "1" if chap else "0")
        return tpg

    def _with_auth(self, data: dict[str, Any], chap: Chap | None) -> dict[str, Any]:
        if chap is not None:
            data.update(auth_method="CHAP", auth_username=chap.username,
                        auth_password=chap.password)
            if chap.username_in and chap.password_in:
                data.update(auth_username_in=chap.username_in, auth_password_in=chap.password_in)
        return {"driver_volume_type": "iscsi", "data": data}


def set_t10(so_path: str, vendor: str, product: str) -> None:
    for attr, value in (("vendor_id", vendor), ("product_id", product)):
        path = Path(so_path, "wwn", attr)
        try:
            path.write_text(value)
        except OSError as err:
            raise VendorRefused(f"this kernel refuses {attr}={value!r} on {path}: {err}") from err
        seen = path.read_text().strip()
        if seen != value:
            raise VendorRefused(f"{path} reads {seen!r} after writing {value!r}")
