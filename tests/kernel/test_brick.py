"""The main attach/detach cases on both engines: native and os-brick (connectors/brick.py).

Kept to the cases users meet first (a Datera 2-portal volume, K2 LUNs sharing a
target) because os-brick is slow under emulation; the native engine's other cases
live in test_iscsi_connector.py.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostagent.connection_info import ISCSI, parse
from hostagent.connectors.base import Connector
from hostagent.connectors.brick import (
    BrickConnector,
    BrickOptions,
    CommandCounter,
    os_brick_factory,
)
from hostagent.connectors.iscsi import IscsiConnector, IscsiOptions
from hostagent.host.executor import AsyncExecutor
from hostagent.host.fs import HostFS
from hostagent.host.multipath import SocketClient
from hostagent.host.udev import PyudevWatcher
from hostagent.models import Device
from tests.kernel import rawtools as raw
from tests.kernel.engine import check_data
from tests.kernel.test_daemon import RUN_DIR, Daemon, cli_attach
from tests.kernel.test_iscsi_connector import assert_nothing_of
from tests.kernel.testbed import probe
from tests.kernel.testbed.lio import Export, IscsiArray

ENGINES = ["native", "os-brick"]


@pytest.fixture(params=ENGINES)
def connector(request: pytest.FixtureRequest) -> Iterator[Connector]:
    if request.param == "native":
        yield IscsiConnector(AsyncExecutor(), HostFS("/"), PyudevWatcher(), SocketClient(),
                             options=IscsiOptions(device_timeout=90))
        return
    with tempfile.TemporaryDirectory(prefix="hostagent-brick-locks-") as locks:
        factory = os_brick_factory(BrickOptions(lock_path=locks), CommandCounter())
        yield BrickConnector(ISCSI, HostFS("/"), factory)


def check_map(connector: Connector, device: Device, wwid: str) -> None:
    """A map of both paths. os-brick may answer as soon as the map exists, before its
    second path has joined it (seen with a K2 LUN on live sessions): multipathd's view
    is then awaited rather than asserted on what os-brick returned."""
    if isinstance(connector, IscsiConnector):
        raw.assert_map(device, wwid, 2)
        return
    assert device.multipath and device.path.startswith("/dev/dm-") and device.wwn == wwid
    assert raw.wait_map(wwid, 2, timeout=30).dm == device.path[5:]


def attach(connector: Connector, export: Export) -> Device:
    return asyncio.run(connector.attach(parse(export.connection_info), multipath=True))


def detach(connector: Connector, export: Export, device: Device) -> None:
    result = asyncio.run(connector.detach(parse(export.connection_info), device))
    assert not result.data_may_be_lost, result.warnings


def test_datera_two_portals_attach_detach(array: IscsiArray, connector: Connector) -> None:
    export = array.export_datera()
    device = attach(connector, export)
    check_map(connector, device, export.wwid)
    assert device.size_bytes == 64 * 1024 * 1024
    assert connector.current(device) == device
    check_data(device.path)
    detach(connector, export, device)
    assert connector.current(device) is None
    assert_nothing_of(export)


def test_k2_two_luns_share_the_sessions_until_the_last_detach(
        array: IscsiArray, connector: Connector) -> None:
    first, second = array.export_k2(), array.export_k2()  # SendTargets finds the 2nd portal
    devices = [attach(connector, e) for e in (first, second)]
    for e, d in zip((first, second), devices, strict=True):
        check_map(connector, d, e.wwid)
    assert len(probe.sessions()) == 2
    detach(connector, first, devices[0])
    assert not raw.disks_with_wwid(first.wwid)
    assert len(probe.sessions()) == 2 and probe.maps()[second.wwid].active == 2
    detach(connector, second, devices[1])
    assert_nothing_of(second)
    assert probe.sessions() == []


def test_the_agent_configured_with_engine_os_brick_serves_attach_and_detach(
        array: IscsiArray, tmp_path: Path) -> None:
    RUN_DIR.mkdir(exist_ok=True)
    (tmp_path / "agent").mkdir()
    agent = Daemon(tmp_path / "agent", {"DEFAULT": {"engine": "os-brick"}})
    agent.start()
    try:
        export = array.export_datera()
        device = cli_attach(agent, tmp_path, export, "brick-1")["device"]
        # As check_map: os-brick may answer before the second path joined the map.
        assert device["wwn"] == export.wwid and device["path"].startswith("/dev/dm-")
        assert raw.wait_map(export.wwid, 2, timeout=30).dm == device["path"][5:]
        check_data(device["path"])
        result = agent.cli("detach", "brick-1")
        assert result.returncode == 0, result.stderr
        assert_nothing_of(export)
    finally:
        agent.stop()
    assert "(engine os-brick," in agent.log.read_text()
