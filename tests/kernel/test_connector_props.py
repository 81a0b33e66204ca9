"""GET /v1/connector against os-brick 7.1.1's get_connector_properties, key by key,
on the guest: the same keys with the same values, but for the differences
hostagent.connectors.properties documents (each allowed here only where its condition
holds), and `ip` never loopback.

os-brick is called as nova calls it (nova-compute: my_ip = CONF.my_ip, whose default
is oslo.utils' get_my_ipv4(); multipath = volume_use_multipath; enforce_multipath
False as the brief asks), in this process with privsep in direct mode (as the
os-brick engine runs it). hostagent answers through its real app (daemon.build from
a config file, make_app), in this process too: no agent to start under emulation.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from hostagent import config
from hostagent.agent.daemon import build
from hostagent.api.app import make_app
from hostagent.connectors.brick import configure_os_brick
from hostagent.host.net import is_loopback
from tests.kernel.testbed.fcoe import FcFabric
from tests.kernel.testbed.guest import Guest
from tests.kernel.testbed.sh import run, wait_until

# The test's default route: on a dummy interface of its own, in a network no other
# test uses (their portals are 127.0.0.1 and 10.99.x on dummy0/dummy1; a default
# route changes no route to them).
ROUTE_IF, ROUTE_ADDR, ROUTE_GW = "hadefault0", "10.98.0.2", "10.98.0.1"
ETC_NVME = Path("/etc/nvme")
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:8c7e6d5f-4a3b-4c2d-9e1f-0a1b2c3d4e5f"
HOSTID = "3f2e1d0c-9b8a-4766-8544-332211009988"


def _default_route_source() -> str | None:
    answer = run(["ip", "-j", "route", "get", "192.0.2.0"], ok=(0, 2)).stdout
    routes = json.loads(answer) if answer.strip() else []
    return str(routes[0]["prefsrc"]) if routes and routes[0].get("prefsrc") else None


def _no_tentative_addresses() -> bool:
    return run(["ip", "-6", "addr", "show", "tentative"]).stdout.strip() == ""


@pytest.fixture
def default_route(guest: Guest) -> Iterator[str]:
    """The default route's source address. The guest boots with no network (no default
    route), so the test makes one on a dummy interface and removes it after."""
    existing = _default_route_source()
    if existing is not None:
        yield existing
        return
    run(["ip", "link", "add", ROUTE_IF, "type", "dummy"])
    try:
        run(["ip", "addr", "add", f"{ROUTE_ADDR}/24", "dev", ROUTE_IF])
        run(["ip", "link", "set", ROUTE_IF, "up"])
        run(["ip", "route", "add", "default", "via", ROUTE_GW, "dev", ROUTE_IF])
        # Its IPv6 link-local address settles first, so both sides list the same ones.
        wait_until(_no_tentative_addresses, timeout=15, what="IPv6 DAD to finish")
        assert _default_route_source() == ROUTE_ADDR
        yield ROUTE_ADDR
    finally:
        run(["ip", "link", "del", ROUTE_IF])


@pytest.fixture
def nvme_etc() -> Iterator[Path]:
    """/etc/nvme as the test found it, put back after (os-brick makes the directory, and
    writes files in it where nvme-cli is installed; the guest's /etc is a tmpfs)."""
    saved = {p.name: p.read_bytes() for p in ETC_NVME.iterdir()} if ETC_NVME.is_dir() \
        else None
    yield ETC_NVME
    shutil.rmtree(ETC_NVME, ignore_errors=True)
    if saved is not None:
        ETC_NVME.mkdir()
        for name, data in saved.items():
            (ETC_NVME / name).write_bytes(data)


def hostagent_connector(tmp_path: Path) -> dict[str, Any]:
    """GET /v1/connector of an agent built as `hostagent serve --config` builds it."""
    conf = tmp_path / "hostagent.conf"
    conf.write_text(f"[DEFAULT]\nstate_dir = {tmp_path / 'state'}\n"
                    f"lock_path = {tmp_path / 'locks'}\n")
    agent = build(config.load(str(conf)))

    async def get() -> dict[str, Any]:
        app = make_app(agent.service, peer_check=None, preflight=agent.preflight)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/v1/connector")
            assert resp.status == 200, await resp.text()
            doc: dict[str, Any] = await resp.json()
        await agent.service.close()
        return doc

    try:
        return asyncio.run(get())
    finally:
        agent.store.close()


def os_brick_connector() -> dict[str, Any]:
    configure_os_brick(None)
    from os_brick.initiator import connector
    from oslo_utils import netutils

    props: dict[str, Any] = connector.get_connector_properties(
        root_helper="", my_ip=netutils.get_my_ipv4(), multipath=True, enforce_multipath=False)
    return props


def nvme_cli_present() -> bool:
    return shutil.which("nvme") is not None


def documented_differences(before: dict[str, bool]) -> set[str]:
    """The keys os-brick may report and hostagent not, by hostagent.connectors.properties's
    list; `before`: what the host had before os-brick ran."""
    allowed: set[str] = set()
    if nvme_cli_present():
        if not before["hostnqn"]:
            allowed |= {"nqn", "found_dsc", "host_ips"}
        if not before["hostid"]:
            allowed.add("nvme_hostid")
    if not before["product_uuid"]:
        allowed.add("system uuid")  # os-brick ran dmidecode
    if before["scini"]:
        allowed.add("sdc_guid")
    root = run(["findmnt", "-v", "/", "-n", "-o", "SOURCE"]).stdout.strip()
    if root.startswith("/dev/") and "ID_FS_UUID=" not in run(
            ["udevadm", "info", "--query=property", "--name", root], ok=(0, 1, 4)).stdout:
        allowed.add("uuid")  # os-brick's blkid probed a device udev has no UUID of
    return allowed


def host_state() -> dict[str, bool]:
    product_uuid = Path("/sys/class/dmi/id/product_uuid")
    return {"hostnqn": (ETC_NVME / "hostnqn").is_file(),
            "hostid": (ETC_NVME / "hostid").is_file(),
            "product_uuid": product_uuid.is_file() and bool(product_uuid.read_text().strip()),
            "scini": Path("/dev/scini").exists()}


def side_by_side(title: str, brick: dict[str, Any], ours: dict[str, Any]) -> str:
    keys = list(dict.fromkeys([*brick, *ours]))
    width = max(len(k) for k in keys)
    lines = [f"---- {title}", f"{'key':<{width}}  {'same':<4}  os-brick 7.1.1  |  hostagent"]
    for key in keys:
        b = json.dumps(brick[key]) if key in brick else "(absent)"
        o = json.dumps(ours[key]) if key in ours else "(absent)"
        same = "yes" if brick.get(key, KeyError) == ours.get(key, KeyError) else "NO"
        lines.append(f"{key:<{width}}  {same:<4}  {b}  |  {o}")
    return "\n".join(lines)


def show(table: str) -> None:
    """Printed (pytest shows it on failure) and kept in results/connector-props.txt."""
    print(table)
    out = Path(os.environ.get("HOSTAGENT_RESULTS", "/tmp")) / "connector-props.txt"
    with out.open("a") as f:
        f.write(table + "\n")


def compare(title: str, tmp_path: Path) -> dict[str, Any]:
    """Both connectors, hostagent's first (so nothing os-brick writes feeds it), printed
    side by side; every difference must be a documented one."""
    before = host_state()
    ours = hostagent_connector(tmp_path)
    brick = os_brick_connector()
    show(side_by_side(title, brick, ours))
    allowed = documented_differences(before)
    assert set(ours) <= set(brick), f"keys os-brick does not have: {set(ours) - set(brick)}"
    assert set(brick) - set(ours) <= allowed, f"missing: {set(brick) - set(ours) - allowed}"
    differing = {k for k in ours if ours[k] != brick[k]}
    assert differing == set(), {k: (brick[k], ours[k]) for k in differing}
    return ours


def test_the_connector_is_os_bricks(default_route: str, fc_fabric: FcFabric, nvme_etc: Path,
                                    tmp_path: Path) -> None:
    ours = compare("as the guest is (FCoE links up, a default route)", tmp_path)
    assert ours["ip"] == default_route and not is_loopback(ours["ip"])
    assert ours["initiator"] == Path("/etc/iscsi/initiatorname.iscsi").read_text().split(
        "=", 1)[1].strip()
    assert {link.initiator_wwpn for link in fc_fabric.links} <= set(ours["wwpns"])
    assert ours["multipath"] is True and ours["enforce_multipath"] is False


def test_with_nvme_host_files_nqn_and_lightos_keys_match(default_route: str, nvme_etc: Path,
                                                         tmp_path: Path) -> None:
    nvme_etc.mkdir(exist_ok=True)
    (nvme_etc / "hostnqn").write_text(HOSTNQN + "\n")
    (nvme_etc / "hostid").write_text(HOSTID + "\n")
    ours = compare("with /etc/nvme/hostnqn and hostid", tmp_path)
    assert ours["nqn"] == HOSTNQN and "host_ips" in ours and "found_dsc" in ours
    assert default_route in ours["host_ips"]
    assert ("nvme_hostid" in ours) is nvme_cli_present()


def test_without_a_default_route_ip_is_not_loopback(guest: Guest, nvme_etc: Path,
                                                    tmp_path: Path) -> None:
    """The one documented difference in `ip`: os-brick gets nova's get_my_ipv4(), which
    is 127.0.0.1 here; hostagent reports the first global address instead."""
    if _default_route_source() is not None:
        pytest.skip("the guest has a default route of its own")
    ours = hostagent_connector(tmp_path)
    brick = os_brick_connector()
    show(side_by_side("without a default route", brick, ours))
    assert brick["ip"] == "127.0.0.1"
    globals_ = json.loads(run(["ip", "-4", "-j", "addr", "show", "scope", "global"]).stdout)
    first = next(a["local"] for link in globals_ for a in link["addr_info"]
                 if not is_loopback(a["local"]))
    assert ours["ip"] == first and not is_loopback(ours["ip"])
    assert {k: v for k, v in ours.items() if k != "ip"} == \
        {k: v for k, v in brick.items() if k in ours and k != "ip"}
