"""The native FC connector on the real kernel: K2 over two software-FCoE links.

Every test ends with the plugin's leak check: no sd, dm, SCSI device, loop
device or LIO LUN may be left behind. A link brought back up makes the kernel
scan its target for every LUN mapped to us, so a test that takes a link down
unexports its LUNs before it brings the link back.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostagent.connection_info import parse
from hostagent.connectors.fc import FcConnector
from hostagent.host.executor import AsyncExecutor
from hostagent.host.fs import HostFS
from hostagent.host.multipath import SocketClient
from hostagent.host.udev import PyudevWatcher
from hostagent.models import Device, FcVolume
from tests.kernel import rawtools as raw
from tests.kernel.testbed import probe
from tests.kernel.testbed.faults import Faults
from tests.kernel.testbed.fcoe import FcArray, FcExport, FcFabric, rport
from tests.kernel.testbed.sh import run, wait_until

MIB = 1024 * 1024
METRICS: dict[str, Any] = {}


class Host:
    """The connector wired to the real host, with its counters."""

    def __init__(self) -> None:
        self.executor = AsyncExecutor()
        self.mpd = SocketClient()
        self.connector = FcConnector(self.executor, HostFS("/"), PyudevWatcher(), self.mpd)

    async def attach(self, export: FcExport, multipath: bool = True) -> Device:
        start = time.monotonic()
        timeline: list[str] = []

        def progress(phase: str) -> None:
            timeline.append(f"{time.monotonic() - start:6.3f} {phase}")

        device = await self.connector.attach(parse(export.connection_info),
                                             multipath=multipath, progress=progress)
        timeline.append(f"{time.monotonic() - start:6.3f} done")
        METRICS.setdefault("timelines", []).append(timeline)
        return device

    async def detach(self, export: FcExport, device: Device) -> None:
        result = await self.connector.detach(parse(export.connection_info), device)
        assert not result.data_may_be_lost, result.warnings


@pytest.fixture
def host() -> Host:
    return Host()


@pytest.fixture(scope="module", autouse=True)
def metrics() -> Iterator[dict[str, Any]]:
    yield METRICS
    out = Path(os.environ.get("HOSTAGENT_RESULTS", "/tmp")) / "fc-metrics.json"
    out.write_text(json.dumps(METRICS, indent=2, sort_keys=True))


def timed(name: str, host: Host, coro: Any) -> Any:
    processes, commands = host.executor.calls, host.mpd.calls
    start = time.monotonic()
    result = asyncio.run(coro)
    METRICS.setdefault(name, []).append({
        "seconds": round(time.monotonic() - start, 3),
        "processes": host.executor.calls - processes,
        "multipathd_commands": host.mpd.calls - commands,
    })
    return result


def check_data(path: str, size: int = 4 * MIB) -> None:
    pattern = os.urandom(size)
    fd = os.open(path, os.O_RDWR | os.O_SYNC)
    try:
        os.pwrite(fd, pattern, MIB)
        os.fsync(fd)
    finally:
        os.close(fd)
    # Read back through a fresh open with the page cache dropped: the array has it.
    run(["blockdev", "--flushbufs", path])
    with open(path, "rb") as f:
        f.seek(MIB)
        assert f.read(size) == pattern


def assert_nothing_of(export: FcExport) -> None:
    assert not raw.disks_with_wwid(export.wwid)
    assert export.wwid not in probe.maps()


def wait_link_down(fabric: FcFabric, index: int) -> None:
    """Until the kernel has noticed: the remote port is no longer Online."""
    link = fabric.links[index]
    host = fabric.initiator_host(link)

    def down() -> bool:
        port = rport(host, link.target_wwpn)
        return port is None or (port / "port_state").read_text().strip() != "Online"

    wait_until(down, timeout=30, what=f"link {link.initiator_if} to go down")


def test_one_lun_gives_one_map_of_two_paths(fc_array: FcArray, host: Host) -> None:
    export = fc_array.export()
    assert isinstance(parse(export.connection_info), FcVolume)
    device = timed("fc_attach", host, host.attach(export))
    raw.assert_map(device, export.wwid, 2)
    assert device.missing == ()
    assert device.size_bytes == 32 * MIB
    assert {probe.vendor_model(p.device) for p in device.paths} == {("KMNRIO", "K2")}
    assert {p.target for p in device.paths} == {
        link.target_wwpn for link in fc_array.fabric.links}
    check_data(device.path)
    timed("fc_detach", host, host.detach(export, device))
    assert_nothing_of(export)


def test_three_luns_attach_and_detach_in_shuffled_order(
        fc_array: FcArray, host: Host) -> None:
    # LUN 300: above the 255 of single-level peripheral addressing.
    exports = [fc_array.export(), fc_array.export(), fc_array.export(lun=300)]
    devices = {}
    for e in exports:
        devices[e.lun] = timed("fc_attach_shared_ports", host, host.attach(e))
        raw.assert_map(devices[e.lun], e.wwid, 2)
    assert {p.hctl.rsplit(":", 1)[1] for p in devices[300].paths} == {"300"}
    order = exports[:]
    random.Random(5).shuffle(order)
    for i, e in enumerate(order):
        timed("fc_detach_shared_ports", host, host.detach(e, devices[e.lun]))
        assert_nothing_of(e)
        for other in order[i + 1:]:
            assert probe.maps()[other.wwid].active == 2, f"after {i + 1} detaches"


def test_one_link_down_at_attach_gives_a_one_path_device_in_bounded_time(
        fc_array: FcArray, host: Host, faults: Faults) -> None:
    fabric = fc_array.fabric
    export = fc_array.export()
    faults.fc_link_down(1)
    wait_link_down(fabric, 1)
    start = time.monotonic()
    device = timed("fc_attach_one_link_down", host, host.attach(export))
    elapsed = time.monotonic() - start
    raw.assert_map(device, export.wwid, 1)
    assert device.paths[0].target == fabric.links[0].target_wwpn
    # The down link is named, by its HBA and by the target nothing else reaches.
    down = fabric.links[1]
    assert any(m.startswith(down.initiator_wwpn) for m in device.missing), device.missing
    assert any(m.startswith(down.target_wwpn) for m in device.missing), device.missing
    # Nothing waits for the dead link: bounded by the healthy path's own work.
    assert elapsed < 30, f"attach with a link down took {elapsed:.1f} s"
    check_data(device.path)
    asyncio.run(host.detach(export, device))
    assert_nothing_of(export)
    fc_array.unexport(export)
    faults.fc_link_up(1)
    fabric.wait_online(down)


def test_a_link_down_and_up_while_attached_leaves_a_working_map(
        fc_array: FcArray, host: Host, faults: Faults) -> None:
    fabric = fc_array.fabric
    export = fc_array.export()
    device = asyncio.run(host.attach(export))
    raw.assert_map(device, export.wwid, 2)
    faults.fc_link_down(0)
    wait_link_down(fabric, 0)
    check_data(device.path)  # fails over to the other link
    wait_until(lambda: probe.maps()[export.wwid].active == 1, timeout=60,
               what="multipathd to fail the path of the down link")
    faults.fc_link_up(0)
    fabric.wait_online(fabric.links[0])
    raw.wait_map(export.wwid, 2, timeout=60)
    check_data(device.path)
    asyncio.run(host.detach(export, device))
    assert_nothing_of(export)
