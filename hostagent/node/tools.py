"""The node-preparation tools built on the real host, for hostagent-cli's local
commands (the daemon wires its own in agent/daemon.py)."""

from __future__ import annotations

from dataclasses import dataclass

from hostagent.host.executor import AsyncExecutor
from hostagent.host.fs import HostFS
from hostagent.host.multipath import SocketClient
from hostagent.host.net import HostNet
from hostagent.node.mpathconf import MultipathConfig
from hostagent.node.preflight import Preflight
from hostagent.node.udevrule import UdevRule


@dataclass(frozen=True)
class Host:
    preflight: Preflight
    mpconf: MultipathConfig
    udev: UdevRule


def real_host() -> Host:
    fs, executor, multipathd = HostFS("/"), AsyncExecutor(), SocketClient()
    mpconf, udev = MultipathConfig(fs, executor, multipathd), UdevRule(fs, executor)
    return Host(Preflight(fs, executor, multipathd, HostNet(), mpconf, udev), mpconf, udev)
