"""Typed values passed between the layers (frozen dataclasses)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class Portal:
    host: str  # an IPv4/IPv6 address or a DNS name, without brackets
    port: int = 3260

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Portal:
        """'host:port' or '[v6]:port' (already validated input)."""
        host, _, port = text.rpartition(":")
        return cls(host.strip("[]"), int(port))


@dataclass(frozen=True)
class Chap:
    username: str
    password: str = field(repr=False)
    # Mutual CHAP: the target's credentials, which the initiator checks.
    username_in: str | None = None
    password_in: str | None = field(default=None, repr=False)

    @property
    def mutual(self) -> bool:
        return self.username_in is not None

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.password, self.password_in) if s)


@dataclass(frozen=True)
class Access:
    """How the controller wants the volume used, whatever its transport."""

    read_only: bool = False  # access_mode "ro": the map and its disks are set read-only
    encrypted: bool = False  # the device holds ciphertext: the consumer opens it (LUKS)
    enforce_multipath: bool = False  # no multipath map: refuse rather than one path


READ_WRITE = Access()  # the default: what a controller that says nothing wants


@dataclass(frozen=True)
class IscsiTarget:
    portal: Portal
    iqn: str
    lun: int


@dataclass(frozen=True)
class IscsiVolume:
    """An iSCSI volume as the controller exported it.

    `discover` is set when only a singular portal was given (no target_portals
    with target_iqns): a multipath attach then finds the other portals by
    SendTargets on `targets[0]`, as os-brick does.
    """

    targets: tuple[IscsiTarget, ...]
    discover: bool = False
    chap: Chap | None = None
    discovery_chap: Chap | None = None
    volume_id: str | None = None
    expected_wwn: str | None = None
    access: Access = READ_WRITE

    @property
    def iqns(self) -> frozenset[str]:
        return frozenset(t.iqn for t in self.targets)

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for c in (self.chap, self.discovery_chap) if c for s in c.secrets())


@dataclass(frozen=True)
class FcVolume:
    target_wwpns: tuple[str, ...]  # 16 lowercase hex digits each
    lun: int
    initiator_target_map: tuple[tuple[str, tuple[str, ...]], ...] = ()
    volume_id: str | None = None
    expected_wwn: str | None = None
    # os-brick's addressing_mode (SAM, transparent, SAM2, SAM3-flat): how the array
    # addresses LUN ids above 255; host/fc.py's kernel_lun applies it.
    addressing_mode: str | None = None
    access: Access = READ_WRITE

    @property
    def target_keys(self) -> frozenset[str]:
        """Every target WWPN the volume names (its lock keys)."""
        return frozenset(self.target_wwpns).union(
            *(targets for _, targets in self.initiator_target_map))

    def secrets(self) -> tuple[str, ...]:
        return ()


VolumeSpec = IscsiVolume | FcVolume


@dataclass(frozen=True)
class PathInfo:
    device: str  # sdX
    hctl: str  # H:C:T:L
    portal: str | None = None  # iSCSI: ip:port
    target: str | None = None  # iSCSI IQN or FC target WWPN


@dataclass(frozen=True)
class Device:
    """What an attach produced: one block device (a dm map, or an sd without multipath)."""

    # /dev/dm-N or /dev/sdX, as verified since the agent started; None once the device
    # is gone (a reboot): the kernel hands the name to the next device that comes.
    path: str | None
    wwn: str  # the WWID multipath uses (3 + NAA designator, ...)
    paths: tuple[PathInfo, ...]
    multipath: bool
    missing: tuple[str, ...] = ()  # portals or targets that gave no path, with the reason
    size_bytes: int = 0
    # iSCSI: every (portal, iqn, lun) the attach resolved, logged in or not, so a
    # detach cleans them up without asking the array (SendTargets) again.
    iscsi_targets: tuple[IscsiTarget, ...] = ()
    # A name no other device can get: /dev/disk/by-id/dm-uuid-mpath-<wwid> for a map,
    # a by-id link of a single-path disk. dm-N and sdX are handed out again.
    stable_path: str | None = None
    read_only: bool = False  # the map and its disks were set read-only (access_mode ro)
    encrypted: bool = False  # the controller says the volume holds ciphertext
    discovered_from: str | None = None  # the portal whose SendTargets listed the others

    def without_kernel_names(self) -> Device:
        """What stays true of a device that is gone: its WWID and targets. Its dm-N,
        sd names and H:C:T:L are another device's as soon as the kernel reuses them."""
        return replace(self, path=None, paths=())


@dataclass(frozen=True)
class Claims:
    """What the other live attachments own on the host. A teardown (detach, rollback,
    recovery, repair) leaves every one of these alone, whatever else it believes."""

    wwids: frozenset[str] = frozenset()  # their volumes (maps, and disks reporting them)
    hctls: frozenset[str] = frozenset()  # their disks' addresses
    sessions: frozenset[tuple[str, str]] = frozenset()  # (IQN, portal) they expect

    def session(self, iqn: str, portal: object) -> bool:
        return (iqn, str(portal)) in self.sessions


NO_CLAIMS = Claims()
# Read at the moment of each destructive step, under the engine's target locks, so
# it reflects the store then, not when the operation began.
ClaimsSource = Callable[[], Claims]


def no_claims() -> Claims:
    return NO_CLAIMS


@dataclass(frozen=True)
class DetachResult:
    data_may_be_lost: bool = False  # force went on past a failed flush or a busy map
    warnings: tuple[str, ...] = ()


RESTORING = "restoring"  # the phase of an attached volume being made again at start-up


class Status(StrEnum):
    ATTACHING = "attaching"
    ATTACHED = "attached"
    DETACHING = "detaching"
    FAILED = "failed"  # the attach failed and was undone, or the device vanished
    DETACHED = "detached"  # kept a while so a retried detach gets an answer


@dataclass(frozen=True)
class Attachment:
    """One volume attachment as the agent remembers it (secrets removed)."""

    id: str
    protocol: str  # "iscsi" or "fibre_channel"
    connection_info: dict[str, Any]  # the controller's, without CHAP secrets
    multipath: bool
    digest: str  # keyed hash of the request: a retry matches it, a conflicting request not
    status: Status
    created_at: float
    updated_at: float
    volume_id: str | None = None
    phase: str | None = None  # the step an operation is at, for progress
    device: Device | None = None
    last_error: dict[str, Any] | None = None
    force: bool = False  # the detach in progress was asked with force


# ---- JSON forms (state database and API) --------------------------------------------

def device_to_dict(device: Device) -> dict[str, Any]:
    return {
        "path": device.path, "wwn": device.wwn, "multipath": device.multipath,
        "size_bytes": device.size_bytes, "missing": list(device.missing),
        "paths": [{"device": p.device, "hctl": p.hctl, "portal": p.portal, "target": p.target}
                  for p in device.paths],
        "iscsi_targets": [{"portal": str(t.portal), "iqn": t.iqn, "lun": t.lun}
                          for t in device.iscsi_targets],
        "stable_path": device.stable_path, "read_only": device.read_only,
        "encrypted": device.encrypted, "discovered_from": device.discovered_from,
    }


def device_from_dict(d: dict[str, Any]) -> Device:
    return Device(
        path=d["path"], wwn=d["wwn"], multipath=d["multipath"], size_bytes=d["size_bytes"],
        missing=tuple(d["missing"]),
        paths=tuple(PathInfo(p["device"], p["hctl"], p["portal"], p["target"])
                    for p in d["paths"]),
        iscsi_targets=tuple(IscsiTarget(Portal.parse(t["portal"]), t["iqn"], t["lun"])
                            for t in d["iscsi_targets"]),
        # Absent in rows written before they existed:
        stable_path=d.get("stable_path"), read_only=d.get("read_only", False),
        encrypted=d.get("encrypted", False), discovered_from=d.get("discovered_from"),
    )


def attachment_to_dict(att: Attachment) -> dict[str, Any]:
    """The API's view: everything but the request digest."""
    return {
        "id": att.id, "volume_id": att.volume_id, "protocol": att.protocol,
        "status": att.status.value, "phase": att.phase, "multipath": att.multipath,
        "device": device_to_dict(att.device) if att.device else None,
        "connection_info": att.connection_info, "last_error": att.last_error,
        "created_at": att.created_at, "updated_at": att.updated_at,
    }
