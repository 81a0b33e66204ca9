"""The protocol every engine (native iSCSI, native FC, os-brick) implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from hostagent.errors import MultipathRequired
from hostagent.models import ClaimsSource, DetachResult, Device, PathInfo, VolumeSpec, no_claims

Progress = Callable[[str], None]


def no_progress(phase: str) -> None:
    """The default progress sink: phases are only reported when someone listens."""


class Connector(Protocol):
    """`claims` is what the other live attachments own (models.Claims, read at each step): every
    teardown step leaves it alone, and an attach refuses a WWID among it."""

    async def attach(self, spec: VolumeSpec, *, multipath: bool,
                     progress: Progress = no_progress, claims: ClaimsSource = no_claims
                     ) -> Device: ...

    async def detach(self, spec: VolumeSpec, device: Device, *, force: bool = False,
                     progress: Progress = no_progress,
                     claims: ClaimsSource = no_claims) -> DetachResult: ...

    async def extend(self, spec: VolumeSpec, device: Device) -> int: ...

    async def restore(self, spec: VolumeSpec, device: Device, *,
                      progress: Progress = no_progress,
                      claims: ClaimsSource = no_claims) -> Device:
        """Make a recorded device again (after a reboot) from what the host keeps; a
        WWID other than the recorded one is never accepted."""
        ...

    async def recover(self, spec: VolumeSpec, claims: ClaimsSource = no_claims) -> None:
        """Undo an attach that was cut off by a crash, from its spec alone."""
        ...

    def current(self, device: Device) -> Device | None:
        """The attached volume's device as the host has it now, its kernel names read
        again (never the record's), or None when it is gone."""
        ...

    def connector_properties(self, *, multipath: bool) -> dict[str, Any]: ...

    @property
    def session_iface(self) -> str | None:
        """The iSCSI iface whose sessions are this engine's; None: any (or no sessions)."""
        ...


class RepairKind(StrEnum):
    LOGIN = "login"  # log a missing session in again (its node record is ours)
    SCAN = "scan"  # targeted scan of the LUN, the disk added to the map
    READD = "readd"  # a running disk missing from the map: re-identified and added back
    REPLACE = "replace"  # an offline disk nobody holds: deleted, the LUN scanned anew


@dataclass(frozen=True)
class PathRepair:
    """One path of an attached volume to make again, as health observed it."""

    kind: RepairKind
    label: str  # iSCSI: the portal; FC: "HBA -> target"
    target: str | None  # IQN or target WWPN
    hctl: str | None  # where the LUN is addressed; None: no session yet (LOGIN)
    device: str | None  # the sd at hctl now, if any


@runtime_checkable
class Repairer(Protocol):
    """What self-healing may ask of an engine; the native engines offer it."""

    async def repair(self, spec: VolumeSpec, device: Device, repair: PathRepair) -> PathInfo:
        """Make the path again under the volume's target locks, its disk checked to be
        the volume's and in the map; the new path. Raises HostAgentError."""
        ...


def refuse_single_path(multipath: bool) -> None:
    """enforce_multipath on an attach that would be single-path: refused, saying why."""
    if not multipath:
        raise MultipathRequired("the controller enforces multipath (enforce_multipath) and "
                                "this attach is single-path (options.multipath false, or "
                                "[DEFAULT] multipath = false)", reason="single_path")
