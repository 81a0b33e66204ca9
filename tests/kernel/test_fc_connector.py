"""The native FC connector on the real kernel: K2 over two software-FCoE links.

Every test ends with the plugin's leak check: no sd, dm, SCSI device, loop
device or LIO LUN may be left behind. A link brought back up makes the kernel
scan its target for every LUN mapped to us, so a test that takes a link down
unexports its LUNs before it brings the link back.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hostagent.connection_info import parse
from hostagent.connectors.fc import FcConnector
from hostagent.host.executor import AsyncExecutor
from hostagent.host.fc import hbas
from hostagent.host.fs import HostFS
from hostagent.host.multipath import SocketClient
from hostagent.host.udev import PyudevWatcher
from hostagent.models import FcVolume
from hostagent.node.preflight import Status, fc_check
from tests.kernel import rawtools as raw
from tests.kernel.engine import MIB, EngineHost, check_data, write_metrics
from tests.kernel.testbed import probe
from tests.kernel.testbed.faults import Faults
from tests.kernel.testbed.fcoe import FcArray, FcExport, FcFabric, rport
from tests.kernel.testbed.sh import wait_until

METRICS: dict[str, Any] = {}


def native_host() -> EngineHost:
    """The native FC engine on the real host."""
    executor, mpd = AsyncExecutor(), SocketClient()
    return EngineHost(FcConnector(executor, HostFS("/"), PyudevWatcher(), mpd),
                      executor, mpd, METRICS)


@pytest.fixture
def host() -> EngineHost:
    return native_host()


@pytest.fixture(scope="module", autouse=True)
def metrics() -> Iterator[dict[str, Any]]:
    yield from write_metrics(METRICS, "fc-metrics.json")


def timed(name: str, host: EngineHost, coro: Any) -> Any:
    return host.timed(name, coro)


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


def test_one_lun_gives_one_map_of_two_paths(fc_array: FcArray, host: EngineHost) -> None:
    export = fc_array.export()
    assert isinstance(parse(export.connection_info), FcVolume)
    device = timed("fc_attach", host, host.attach(export))
    raw.assert_map(device, export.wwid, 2)
    assert device.missing == ()
    assert device.size_bytes == 32 * MIB
    assert {probe.vendor_model(p.device) for p in device.paths} == {("KMNRIO", "K2")}
    assert {p.target for p in device.paths} == {
        link.target_wwpn for link in fc_array.fabric.links}
    # preflight --fc on the same sysfs: both initiator ports Online, by WWPN.
    fc_ready = fc_check(hbas(HostFS("/")))
    assert fc_ready.status == Status.PASS
    assert all(link.initiator_wwpn in fc_ready.detail for link in fc_array.fabric.links)
    check_data(device.path)
    timed("fc_detach", host, host.detach(export, device))
    assert_nothing_of(export)


def test_three_luns_attach_and_detach_in_shuffled_order(
        fc_array: FcArray, host: EngineHost) -> None:
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
        fc_array: FcArray, host: EngineHost, faults: Faults) -> None:
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
        fc_array: FcArray, host: EngineHost, faults: Faults) -> None:
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
