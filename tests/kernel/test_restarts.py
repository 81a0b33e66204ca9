"""iscsid and multipathd restarted, and multipathd reconfigured (what `hostagent-cli
multipath install` does), in the middle of an attach and of a detach (between two of
their steps: the service's phase hook, the one the crash tests use, fires it), and
right before a heal.

Each operation must finish; no map may be left without the paths it should have, and
the next health round repairs what the restart changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from hostagent.agent.service import AttachRequest, Service
from hostagent.agent.state import Store
from hostagent.connection_info import ISCSI, parse
from hostagent.health import HealthMonitor, HealthOptions
from hostagent.host.fs import HostFS
from hostagent.models import Status
from tests.kernel import rawtools as raw
from tests.kernel.engine import check_data
from tests.kernel.test_iscsi_connector import assert_nothing_of, native_host
from tests.kernel.testbed import probe
from tests.kernel.testbed.guest import restart_iscsid, restart_multipathd
from tests.kernel.testbed.lio import IscsiArray
from tests.kernel.testbed.sh import run

EVENTS: dict[str, Callable[[], None]] = {
    "iscsid restarted": restart_iscsid,
    "multipathd restarted": restart_multipathd,
    "multipathd reconfigured": lambda: run(["multipathd", "reconfigure"]),
}
# The step of each operation the event lands in.
ATTACH_AT = {"iscsid restarted": "logging in", "multipathd restarted":
             "building the multipath map", "multipathd reconfigured": "building the multipath map"}
DETACH_AT = {"iscsid restarted": "logging out", "multipathd restarted":
             "removing the multipath map", "multipathd reconfigured": "removing the disks"}


class Trigger:
    """Fires the event once, when the service reports the chosen phase."""

    def __init__(self, event: Callable[[], None]) -> None:
        self.event, self.at, self.fired = event, "", False

    def arm(self, phase: str) -> None:
        self.at, self.fired = phase, False

    def __call__(self, phase: str) -> None:
        if self.at and not self.fired and phase.startswith(self.at):
            self.fired = True
            self.event()


@pytest.mark.parametrize("event", list(EVENTS))
def test_a_daemon_restart_in_the_middle_of_each_operation(
        array: IscsiArray, tmp_path: Path, event: str) -> None:
    trigger = Trigger(EVENTS[event])
    host = native_host()
    service = Service(Store(tmp_path / "state"), {ISCSI: host.connector}, on_phase=trigger)
    monitor = HealthMonitor(service, HostFS("/"), host.mpd,
                            options=HealthOptions(probe=False, heal_interval=0))
    export = array.export_k2()
    info = export.connection_info

    trigger.arm(ATTACH_AT[event])
    att, _ = asyncio.run(service.attach(AttachRequest("r1", info, parse(info), None, True,
                                                      300)))
    assert trigger.fired
    assert att.status == Status.ATTACHED and att.device is not None
    asyncio.run(monitor.run_once())  # whatever the restart changed, one round repairs
    raw.wait_map(export.wwid, 2, timeout=60)
    check_data(att.device.path)

    # A heal under the event: a session logged out behind the agent's back comes back.
    portal = att.device.paths[0].portal
    run(["iscsiadm", "-m", "node", "-T", export.iqn, "-p", str(portal), "-I", "hostagent",
         "--logout"])
    EVENTS[event]()
    asyncio.run(monitor.run_once())
    assert (str(portal), export.iqn) in probe.sessions()
    raw.wait_map(export.wwid, 2, timeout=60)

    trigger.arm(DETACH_AT[event])
    gone = asyncio.run(service.detach("r1"))
    assert trigger.fired and gone.status == Status.DETACHED
    assert_nothing_of(export)
