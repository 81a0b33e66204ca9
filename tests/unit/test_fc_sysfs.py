"""host/fc.py on the sysfs the guest's kernel showed (tests/fixtures/guest/fc_sysfs.txt),
and the fake kernel's FC layout checked against it."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from hostagent.connectors.fc import plan
from hostagent.host import fc
from hostagent.host.fs import HostFS
from hostagent.models import FcVolume
from tests.unit.fakehost import FakeKernel

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/guest/fc_sysfs.txt"
A1, A2 = "2000020000000a01", "2000020000000a02"
B1, B2 = "2000020000000b01", "2000020000000b02"
# The connection_info the K2 FC driver sends for the guest's fabric: every
# initiator mapped to every target, whatever each link really reaches.
K2 = FcVolume((B1, B2), 1, ((A1, (B1, B2)), (A2, (B1, B2))))


def sections() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in FIXTURE.read_text().splitlines():
        if m := re.fullmatch(r"\[(.+)\]", line):
            current = found.setdefault(m[1], [])
        elif line and not line.startswith("#"):
            current.append(line)
    return found


def build(root: Path, lines: list[str]) -> HostFS:
    """The class links (relative, as the kernel makes them) and their attributes."""
    target = root
    for line in lines:
        if " -> " in line:
            link, rel = line.split(" -> ")
            path = root / link.lstrip("/")
            target = (path.parent / rel).resolve()
            target.mkdir(parents=True, exist_ok=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(rel)
        else:
            name, _, value = line.strip().partition(" = ")
            (target / name).write_text(ast.literal_eval(value) + "\n")
    return HostFS(root)


@pytest.fixture
def online(tmp_path: Path) -> HostFS:
    return build(tmp_path, sections()["online"])


def test_hbas_of_the_guest(online: HostFS) -> None:
    assert [(h.host, h.port_name, h.node_name, h.online) for h in fc.hbas(online)] == [
        (6, B1, "1000020000000b01", True), (7, A1, "1000020000000a01", True),
        (8, B2, "1000020000000b02", True), (9, A2, "1000020000000a02", True)]


def test_remote_ports_of_the_guest(online: HostFS) -> None:
    ports = fc.remote_ports(online)
    assert [(p.name, p.host, p.channel, p.port_name, p.is_target, p.target_id)
            for p in ports] == [
        ("rport-6:0-0", 6, 0, A1, False, None), ("rport-7:0-0", 7, 0, B1, True, 0),
        ("rport-8:0-0", 8, 0, A2, False, None), ("rport-9:0-0", 9, 0, B2, True, 0)]
    assert ports[1].roles == ("FCP Target", "FCP Initiator")
    assert [p.name for p in fc.remote_ports(online, host=9)] == ["rport-9:0-0"]


def test_the_k2_volume_on_the_guest_fabric(online: HostFS) -> None:
    todo = plan(fc.hbas(online), fc.remote_ports(online), K2)
    assert [(p.hba.host, p.rport.port_name, p.rport.target_id) for p in todo.pairs] == [
        (7, B1, 0), (9, B2, 0)]
    assert todo.missing == ()


def test_the_k2_volume_with_a_link_down(tmp_path: Path) -> None:
    fs = build(tmp_path, sections()["fcA1 down"])
    assert [h.port_state for h in fc.hbas(fs)] == ["Linkdown", "Linkdown", "Online", "Online"]
    todo = plan(fc.hbas(fs), fc.remote_ports(fs), K2)
    assert [(p.hba.host, p.rport.port_name) for p in todo.pairs] == [(9, B2)]
    assert todo.missing == (f"{A1} (host7): port Linkdown", f"{B1}: seen by no online HBA")


def test_the_fake_kernel_lays_out_fc_as_the_guest_does(tmp_path: Path) -> None:
    real = {line.split(" -> ")[1] for line in sections()["online"] if " -> " in line}
    kernel = FakeKernel(tmp_path)
    host = kernel.add_fc_host(A1)
    name = kernel.add_rport(host, B1)
    fake = {os.readlink(tmp_path / f"sys/class/fc_host/host{host}"),
            os.readlink(tmp_path / f"sys/class/fc_remote_ports/{name}")}

    def shape(link: str) -> str:
        return re.sub(r"\d+", "N", link)

    assert {shape(link) for link in fake} <= {shape(link) for link in real}
