"""An iSCSI host on the fake kernel: the connector wired to the fakes, with
helpers that script the iscsiadm calls the way the real tool behaves."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hostagent.agent.service import AttachRequest, Service
from hostagent.agent.state import Store
from hostagent.connection_info import ISCSI, parse
from hostagent.connectors.iscsi import IscsiConnector
from hostagent.models import Attachment, Chap, Device, IscsiTarget, IscsiVolume, Portal
from tests.unit.fakehost import RECORD, FakeHostFS, FakeKernel, FakeMultipathd, FakeUdev
from tests.unit.fakes import FakeClock, FakeExecutor
from tests.unit.preflighthost import Node

IQN = "iqn.2013-05.com.daterainc:tc:01:sn:0123456789abcdef"
K2 = "iqn.2009-01.com.kaminario:storage.k2.abc123"
P1, P2 = "127.0.0.1:3260", "10.99.0.2:3260"
WWID = "36001405" + "0123456789abcdef012345678"
CHAP = Chap("alice", "chap-secret-1")


class Host:
    def __init__(self, tmp_path: Path) -> None:
        self.kernel = FakeKernel(tmp_path)
        self.fs = FakeHostFS(self.kernel)
        self.executor = FakeExecutor()
        self.mpd = FakeMultipathd(self.kernel)
        self.clock = FakeClock()
        self.connector = IscsiConnector(self.executor, self.fs, FakeUdev(self.kernel), self.mpd,
                                        clock=self.clock)
        self.kernel.write("/etc/iscsi/ifaces/hostagent", "iface.iscsi_ifacename = hostagent\n")

    def record(self, iqn: str, portal: str) -> Path:
        return self.kernel.p(f"/etc/iscsi/nodes/{iqn}/{portal.replace(':', ',')}")

    def expect_new_node(self, iqn: str, portal: str) -> None:
        self.executor.expect(
            ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "-I", "hostagent", "-o", "new"],
            side_effect=lambda: self.kernel.write(str(self.record(iqn, portal))[len(
                str(self.kernel.root)):], RECORD))

    def expect_login(self, iqn: str, portal: str, returncode: int = 0) -> None:
        def effect() -> None:
            # iscsiadm logs in from a node record of that iface, or refuses (rc 21).
            record = self.record(iqn, portal)
            assert record.is_file() and "iface.iscsi_ifacename = hostagent" in \
                record.read_text(), f"login to {iqn} at {portal} with no record of ours"
            if returncode == 0:
                self.kernel.add_session(iqn, portal)
        self.executor.expect(
            ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, "-I", "hostagent", "--login"],
            returncode=returncode, side_effect=effect,
            stderr="" if returncode == 0 else f"iscsiadm: initiator reported error ({returncode})")

    def expect_attach(self, iqn: str) -> None:
        """A record and a login on each portal: an attach of a target with no session."""
        for p in (P1, P2):
            self.expect_new_node(iqn, p)
            self.expect_login(iqn, p)

    def expect_logout(self, iqn: str, portal: str | None = None) -> None:
        """One portal's session, or with none every session of the target."""
        where = ["-p", portal] if portal else []

        def effect() -> None:
            for p in [portal] if portal else (P1, P2):
                if self.kernel.session_host(iqn, p) is not None:
                    self.kernel.remove_session(iqn, p)
        self.executor.expect(
            ["iscsiadm", "-m", "node", "-T", iqn, *where, "-I", "hostagent", "--logout"],
            side_effect=effect)

    def attach(self, vol: IscsiVolume, multipath: bool = True) -> Device:
        return asyncio.run(self.connector.attach(vol, multipath=multipath))


def datera(chap: Chap | None = None, expected: str | None = None) -> IscsiVolume:
    return IscsiVolume(tuple(IscsiTarget(Portal.parse(p), IQN, 0) for p in (P1, P2)),
                       chap=chap, expected_wwn=expected)


def k2(lun: int) -> IscsiVolume:
    return IscsiVolume(tuple(IscsiTarget(Portal.parse(p), K2, lun) for p in (P1, P2)))


SECRET = "s3cret-chap-pass"


def info(iqn: str = IQN, lun: int = 0, secret: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"target_discovered": False, "target_portals": [P1, P2],
                            "target_iqns": [iqn, iqn], "target_luns": [lun, lun],
                            "volume_id": "vol-1"}
    if secret:
        data.update(auth_method="CHAP", auth_username="alice", auth_password=secret)
    return {"driver_volume_type": "iscsi", "data": data}


class Agent:
    def __init__(self, tmp_path: Path) -> None:
        self.host = Host(tmp_path / "host")
        self.state_dir = tmp_path / "state"
        self.store = Store(self.state_dir)
        self.service = Service(self.store, {ISCSI: self.host.connector})
        self.node = Node(tmp_path)  # what GET /v1/preflight checks

    def request(self, att_id: str, connection_info: dict[str, Any],
                timeout: float = 60) -> AttachRequest:
        spec = parse(connection_info)
        return AttachRequest(att_id, connection_info, spec, spec.volume_id, True, timeout)

    def attach(self, att_id: str, connection_info: dict[str, Any],
               timeout: float = 60) -> tuple[Attachment, bool]:
        return asyncio.run(self.service.attach(self.request(att_id, connection_info, timeout)))

    def expect_attach(self, iqn: str = IQN) -> None:
        self.host.expect_attach(iqn)

    def expect_release(self, iqn: str = IQN) -> None:
        self.host.expect_logout(iqn)
