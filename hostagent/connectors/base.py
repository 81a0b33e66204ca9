"""The protocol every engine (native iSCSI, native FC, os-brick) implements."""

from __future__ import annotations

import platform
import socket
import sys
from collections.abc import Callable
from typing import Any, Protocol

from hostagent.models import DetachResult, Device, VolumeSpec

Progress = Callable[[str], None]


def no_progress(phase: str) -> None:
    """The default progress sink: phases are only reported when someone listens."""


class Connector(Protocol):
    async def attach(self, spec: VolumeSpec, *, multipath: bool,
                     progress: Progress = no_progress) -> Device: ...

    async def detach(self, spec: VolumeSpec, device: Device, *, force: bool = False,
                     progress: Progress = no_progress) -> DetachResult: ...

    async def extend(self, spec: VolumeSpec, device: Device) -> int: ...

    async def recover(self, spec: VolumeSpec) -> None:
        """Undo an attach that was cut off by a crash, from its spec alone."""
        ...

    def present(self, device: Device) -> bool: ...

    def connector_properties(self, *, multipath: bool) -> dict[str, Any]: ...


def host_properties(*, multipath: bool, my_ip: str | None) -> dict[str, Any]:
    """The transport-neutral part of os-brick's get_connector_properties."""
    return {
        "platform": platform.machine(),
        "os_type": sys.platform,
        "ip": my_ip or _default_ip(),
        "host": socket.gethostname(),
        "multipath": multipath,
        "enforce_multipath": False,
        "do_local_attach": False,
    }


def _default_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
