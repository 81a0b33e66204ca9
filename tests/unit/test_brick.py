"""The os-brick engine on the fake host: a fake os-brick connector at the seam.

The fake does to the fake kernel what os-brick does to a real one (sessions,
disks, a map) and records how it was called; the engine's own work (properties,
describing the device, mapping errors, running off the event loop) is what is checked.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from os_brick import exception as brick_exc
from oslo_concurrency import processutils

from hostagent.connection_info import FIBRE_CHANNEL, ISCSI
from hostagent.connectors.brick import (
    BrickConnector,
    CommandCounter,
    configure_os_brick,
    fc_properties,
    iscsi_properties,
    translate,
)
from hostagent.errors import (
    CommandFailed,
    CommandTimeout,
    DeviceTimeout,
    HostAgentError,
    HostCommandError,
    InvalidRequest,
    LoginFailed,
    MultipathRequired,
    NoPath,
    WwidInUse,
)
from hostagent.models import Access, Chap, Claims, FcVolume, IscsiTarget, IscsiVolume, Portal
from tests.unit.fakehost import FakeHostFS, FakeKernel
from tests.unit.iscsihost import CHAP, IQN, K2, P1, P2, WWID, datera, k2


class FakeBrick:
    """What os-brick's ISCSIConnector does to the host, on the fake kernel."""

    def __init__(self, kernel: FakeKernel, multipath: bool) -> None:
        self.kernel = kernel
        self.multipath = multipath
        self.calls: list[tuple[str, Any]] = []
        self.threads: set[threading.Thread] = set()
        self.error: Exception | None = None

    def connect_volume(self, props: dict[str, Any]) -> dict[str, Any]:
        self._called("connect", props)
        portals = props.get("target_portals", [props["target_portal"]])
        disks = [self.kernel.add_disk(self.kernel.add_session(props["target_iqn"], p),
                                      props["target_lun"], WWID) for p in portals]
        if not self.multipath:
            return {"type": "block", "scsi_wwn": WWID, "path": f"/dev/{disks[0]}"}
        for sd in disks:
            self.kernel.add_path_to_map(sd)
        return {"type": "block", "scsi_wwn": WWID, "multipath_id": WWID, "path": "/dev/dm-0"}

    def disconnect_volume(self, props: dict[str, Any], device_info: dict[str, Any] | None,
                          force: bool = False, ignore_errors: bool = False) -> None:
        self._called("disconnect", (props, device_info, force, ignore_errors))
        self.kernel.remove_map(WWID)

    def extend_volume(self, props: dict[str, Any]) -> int | None:
        self._called("extend", props)
        return 96 << 20

    def _called(self, name: str, args: Any) -> None:
        self.threads.add(threading.current_thread())
        self.calls.append((name, args))
        if self.error is not None:
            raise self.error


class Host:
    def __init__(self, tmp_path: Path, protocol: str = ISCSI) -> None:
        self.kernel = FakeKernel(tmp_path)
        self.fs = FakeHostFS(self.kernel)
        self.backends: dict[bool, FakeBrick] = {}
        self.backend_class = FakeBrick
        self.error: Exception | None = None  # what every os-brick call raises
        self.connector = BrickConnector(protocol, self.fs, self._make,
                                        properties=lambda mp: {"multipath": mp})

    def _make(self, protocol: str, multipath: bool) -> FakeBrick:
        assert multipath not in self.backends, "one os-brick connector per mode"
        backend = self.backends[multipath] = self.backend_class(self.kernel, multipath)
        backend.error = self.error
        return backend

    def run(self, coro: Any) -> Any:
        return asyncio.run(coro)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def test_attach_describes_the_map_os_brick_made(host: Host) -> None:
    device = host.run(host.connector.attach(datera(CHAP), multipath=True))
    assert device.path == "/dev/dm-0" and device.wwn == WWID and device.multipath
    assert sorted((p.portal, p.target) for p in device.paths) == sorted([(P1, IQN), (P2, IQN)])
    assert all(p.hctl.endswith(":0") for p in device.paths)
    assert device.size_bytes == 64 << 20
    assert device.iscsi_targets == datera().targets
    assert host.connector.current(device) == device


def test_os_brick_runs_off_the_event_loop_thread(host: Host) -> None:
    host.run(host.connector.attach(datera(), multipath=True))
    assert threading.main_thread() not in host.backends[True].threads


def test_the_connector_is_made_once_per_multipath_mode(host: Host) -> None:
    host.run(host.connector.attach(datera(), multipath=True))
    host.run(host.connector.attach(k2(1), multipath=True))
    assert list(host.backends) == [True]


def test_single_path_gives_the_disk(host: Host) -> None:
    device = host.run(host.connector.attach(datera(), multipath=False))
    assert device.path == "/dev/sda" and not device.multipath
    assert [p.device for p in device.paths] == ["sda"]


def test_iscsi_properties_with_lists_and_chap() -> None:
    mutual = Chap("alice", "pw1", "array", "pw2")
    props = iscsi_properties(IscsiVolume(datera().targets, chap=mutual, volume_id="v1"))
    assert props["target_portals"] == [P1, P2] and props["target_iqns"] == [IQN, IQN]
    assert props["target_luns"] == [0, 0] and props["target_discovered"] is False
    assert (props["target_portal"], props["target_iqn"], props["target_lun"]) == (P1, IQN, 0)
    assert props["auth_method"] == "CHAP" and props["auth_password"] == "pw1"
    assert props["auth_username_in"] == "array" and props["auth_password_in"] == "pw2"
    assert props["volume_id"] == "v1"


def test_a_discovered_k2_volume_gives_singular_keys_for_sendtargets() -> None:
    vol = IscsiVolume((IscsiTarget(Portal.parse(P1), K2, 3),), discover=True,
                      discovery_chap=Chap("d", "dpw"))
    props = iscsi_properties(vol)
    assert "target_portals" not in props and props["target_discovered"] is True
    assert props["discovery_auth_method"] == "CHAP" and props["discovery_auth_password"] == "dpw"


def test_fc_properties() -> None:
    vol = FcVolume(("500a0982aaaa0001", "500a0982aaaa0002"), 300,
                   initiator_target_map=(("1000000000000001", ("500a0982aaaa0001",)),),
                   addressing_mode="SAM2")
    assert fc_properties(vol) == {
        "target_wwn": ["500a0982aaaa0001", "500a0982aaaa0002"], "target_lun": 300,
        "volume_id": None, "addressing_mode": "SAM2",
        "initiator_target_map": {"1000000000000001": ["500a0982aaaa0001"]}}


def test_detach_gives_os_brick_its_device_info(host: Host) -> None:
    device = host.run(host.connector.attach(datera(), multipath=True))
    result = host.run(host.connector.detach(datera(), device))
    assert not result.data_may_be_lost
    name, (props, info, force, ignore) = host.backends[True].calls[-1]
    assert name == "disconnect" and props["target_portals"] == [P1, P2]
    assert info == {"type": "block", "path": "/dev/dm-0", "scsi_wwn": WWID,
                    "multipath_id": WWID}
    assert (force, ignore) == (False, False)
    assert host.connector.current(device) is None


def test_a_forced_detach_says_data_may_be_lost(host: Host) -> None:
    device = host.run(host.connector.attach(datera(), multipath=True))
    result = host.run(host.connector.detach(datera(), device, force=True))
    assert result.data_may_be_lost and result.warnings
    assert host.backends[True].calls[-1][1][2:] == (True, True)


def test_recover_asks_os_brick_to_find_everything_from_the_properties(host: Host) -> None:
    host.run(host.connector.recover(k2(2)))
    name, (props, info, force, ignore) = host.backends[True].calls[-1]
    assert name == "disconnect" and props["target_lun"] == 2
    assert (info, force, ignore) == (None, False, True)


def test_extend_returns_os_brick_s_size(host: Host) -> None:
    device = host.run(host.connector.attach(datera(), multipath=True))
    assert host.run(host.connector.extend(datera(), device)) == 96 << 20


def test_a_volume_of_the_other_protocol_is_refused_before_os_brick(tmp_path: Path) -> None:
    host = Host(tmp_path, FIBRE_CHANNEL)
    with pytest.raises(InvalidRequest):
        host.run(host.connector.attach(datera(), multipath=True))
    assert host.backends == {}


@pytest.mark.parametrize(("error", "expected"), [
    (brick_exc.VolumeDeviceNotFound(device="/dev/sdx"), DeviceTimeout),
    (brick_exc.NoFibreChannelVolumeDeviceFound(), DeviceTimeout),
    (brick_exc.TargetPortalsNotFound(target_portals=[P1]), LoginFailed),
    (brick_exc.FailedISCSITargetPortalLogin(message="x"), LoginFailed),
    (brick_exc.NoFibreChannelHostsFound(), NoPath),
    (processutils.ProcessExecutionError(exit_code=24, cmd="iscsiadm -m node --login",
                                        stderr="auth"), CommandFailed),
    (brick_exc.ExecutionTimeout(cmd="multipath -C dm-0"), CommandTimeout),
    (brick_exc.BrickException("anything else"), HostCommandError),
    (RuntimeError("a bug in os-brick"), HostCommandError),
])
def test_os_brick_errors_become_hostagent_errors(
        host: Host, error: Exception, expected: type[HostAgentError]) -> None:
    host.error = error
    with pytest.raises(expected) as caught:
        host.run(host.connector.attach(datera(), multipath=True))
    assert type(caught.value) is expected and caught.value.__cause__ is error


def test_a_failed_command_keeps_its_status() -> None:
    err = processutils.ProcessExecutionError(exit_code=24, cmd="iscsiadm", stderr="auth")
    failed = translate(err, "connect_volume")
    assert isinstance(failed, CommandFailed) and failed.returncode == 24


def test_connector_properties_come_from_the_given_source(host: Host) -> None:
    assert host.connector.connector_properties(multipath=False) == {"multipath": False}


def test_the_counter_counts_every_command() -> None:
    counter = CommandCounter()
    execute = counter.wrap(lambda *cmd, **kw: (" ".join(cmd), ""))
    assert execute("iscsiadm", "-m", "session", run_as_root=True) == ("iscsiadm -m session", "")
    execute("multipath", "-l")
    assert counter.calls == 2


def test_os_brick_runs_in_process_with_our_lock_path(tmp_path: Path) -> None:
    from os_brick import privileged
    from oslo_config import cfg

    configure_os_brick(str(tmp_path))
    assert not privileged.default.client_mode
    assert not privileged.brick_privsep_hide_output.client_mode
    assert cfg.CONF.os_brick.lock_path == str(tmp_path)


def test_a_device_that_cannot_be_described_is_disconnected_again(host: Host) -> None:
    class NoDisk(FakeBrick):
        def connect_volume(self, props: dict[str, Any]) -> dict[str, Any]:
            self._called("connect", props)
            self.kernel.write("/sys/block/dm-7/dm/uuid", f"mpath-{WWID}")
            self.kernel.p("/sys/block/dm-7/slaves").mkdir()
            return {"type": "block", "scsi_wwn": WWID, "path": "/dev/dm-7"}

    host.backend_class = NoDisk
    with pytest.raises(HostCommandError, match="has no disk"):
        host.run(host.connector.attach(datera(), multipath=True))
    name, (_, info, force, ignore) = host.backends[True].calls[-1]
    assert name == "disconnect" and info["path"] == "/dev/dm-7" and force and ignore


def test_enforced_multipath_on_a_single_path_attach_never_reaches_os_brick(host: Host) -> None:
    with pytest.raises(MultipathRequired):
        host.run(host.connector.attach(
            replace(datera(), access=Access(enforce_multipath=True)), multipath=False))
    assert host.backends == {}


def test_enforced_multipath_refuses_the_single_path_os_brick_fell_back_to(host: Host) -> None:
    class NoMultipathd(FakeBrick):  # os-brick with multipathd down: one disk, no map
        def connect_volume(self, props: dict[str, Any]) -> dict[str, Any]:
            self._called("connect", props)
            sd = self.kernel.add_disk(self.kernel.add_session(IQN, P1), 0, WWID)
            return {"type": "block", "scsi_wwn": WWID, "path": f"/dev/{sd}"}

    host.backend_class = NoMultipathd
    with pytest.raises(MultipathRequired, match="os-brick gave a single path"):
        host.run(host.connector.attach(
            replace(datera(), access=Access(enforce_multipath=True)), multipath=True))
    assert host.backends[True].calls[-1][0] == "disconnect"


def test_read_only_sets_what_os_brick_made_read_only(host: Host) -> None:
    device = host.run(host.connector.attach(
        replace(datera(), access=Access(read_only=True, encrypted=True)), multipath=True))
    assert device.read_only and device.encrypted
    assert [host.fs.try_read(f"/sys/block/{n}/ro") for n in ("sda", "sdb", "dm-0")] == \
        ["1"] * 3


def test_a_claimed_wwid_is_refused_before_access_is_applied_or_anything_undone(
        host: Host) -> None:
    # Another live attachment has the WWID: its map must be neither disconnected nor set
    # read-only by this refused attach.
    claimed = Claims(wwids=frozenset({WWID}))
    with pytest.raises(WwidInUse):
        host.run(host.connector.attach(replace(datera(), access=Access(read_only=True)),
                                       multipath=True, claims=lambda: claimed))
    assert [name for name, _ in host.backends[True].calls] == ["connect"]
    assert host.fs.try_read("/sys/block/dm-0/ro") != "1"
