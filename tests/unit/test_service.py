"""The service on the fake host: idempotency, conflicts, state, timeouts, reconcile."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hostagent.agent.service import Service, redact_connection_info
from hostagent.agent.state import DB_NAME, Store
from hostagent.connection_info import ISCSI
from hostagent.errors import AuthenticationFailed, Conflict, DeviceTimeout, NotFound
from hostagent.models import Attachment, Status
from tests.unit.iscsihost import IQN, K2, P1, P2, SECRET, WWID, Agent, info


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    a = Agent(tmp_path)
    a.host.kernel.luns[(IQN, 0)] = WWID
    return a


def test_attach_records_the_device_and_never_the_secret(agent: Agent) -> None:
    agent.expect_attach()
    att, created = agent.attach("a1", info(secret=SECRET))
    assert created and att.status == Status.ATTACHED and att.phase is None
    assert att.device is not None and att.device.path == "/dev/dm-0" and att.device.wwn == WWID
    assert att.connection_info["data"]["auth_password"] == "***"
    assert att.volume_id == "vol-1"
    stored = agent.store.get("a1")
    assert stored == att
    for f in agent.state_dir.iterdir():
        assert SECRET.encode() not in f.read_bytes(), f.name
    agent.host.executor.assert_done()


def test_a_retry_answers_from_the_record_and_runs_nothing(agent: Agent) -> None:
    agent.expect_attach()
    first, _ = agent.attach("a1", info())
    calls = len(agent.host.executor.calls)
    again, created = agent.attach("a1", info())
    assert not created and again == first
    assert len(agent.host.executor.calls) == calls


def test_another_body_under_the_same_id_is_a_conflict(agent: Agent) -> None:
    agent.expect_attach()
    agent.attach("a1", info())
    calls = len(agent.host.executor.calls)
    with pytest.raises(Conflict, match="another request"):
        agent.attach("a1", info(secret=SECRET))
    assert len(agent.host.executor.calls) == calls


def test_the_same_volume_under_another_id_is_a_conflict(agent: Agent) -> None:
    agent.expect_attach()
    agent.attach("a1", info())
    with pytest.raises(Conflict, match="already attached as a1"):
        agent.attach("a2", info())
    assert agent.store.get("a2") is None


def test_concurrent_retries_share_one_attach(agent: Agent) -> None:
    agent.expect_attach()

    async def both() -> list[tuple[Attachment, bool]]:
        req = agent.request("a1", info())
        return list(await asyncio.gather(agent.service.attach(req), agent.service.attach(req)))

    results = asyncio.run(both())
    assert sorted(created for _, created in results) == [False, True]
    assert results[0][0].device == results[1][0].device
    agent.host.executor.assert_done()  # one set of logins only


def test_a_failed_attach_is_recorded_and_can_be_retried(agent: Agent) -> None:
    for p in (P1, P2):
        agent.host.expect_new_node(IQN, p)
        agent.host.expect_login(IQN, p, returncode=24)
    with pytest.raises(AuthenticationFailed):
        agent.attach("a1", info(secret=SECRET))
    failed = agent.service.get("a1")
    assert failed.status == Status.FAILED and failed.last_error is not None
    assert failed.last_error["code"] == "authentication_failed"
    agent.expect_attach()
    att, created = agent.attach("a1", info(secret=SECRET))
    assert created and att.status == Status.ATTACHED and att.last_error is None


def test_an_attach_past_its_timeout_is_undone(agent: Agent) -> None:
    for p in (P1, P2):
        agent.host.expect_new_node(IQN, p)
        agent.host.executor.expect(
            ["iscsiadm", "-m", "node", "-T", IQN, "-p", p, "-I", "hostagent", "--login"],
            delay=30)
    with pytest.raises(DeviceTimeout, match=r"within 0\.3 s"):
        agent.attach("a1", info(), timeout=0.3)
    agent.host.executor.assert_done()
    assert agent.service.get("a1").status == Status.FAILED
    assert not list(agent.host.kernel.p("/etc/iscsi/nodes").rglob("*,*"))


def test_detach_and_its_retry(agent: Agent) -> None:
    agent.expect_attach()
    agent.attach("a1", info())
    agent.expect_release()
    done = asyncio.run(agent.service.detach("a1"))
    assert done.status == Status.DETACHED
    agent.host.executor.assert_done()
    calls = len(agent.host.executor.calls)
    assert asyncio.run(agent.service.detach("a1")).status == Status.DETACHED
    assert len(agent.host.executor.calls) == calls
    assert agent.service.list() == []
    with pytest.raises(NotFound):
        asyncio.run(agent.service.detach("never"))


def test_a_detached_id_can_attach_again(agent: Agent) -> None:
    agent.expect_attach()
    agent.attach("a1", info())
    agent.expect_release()
    asyncio.run(agent.service.detach("a1"))
    agent.expect_attach()
    att, created = agent.attach("a1", info())
    assert created and att.status == Status.ATTACHED


def test_extend_records_the_new_size(agent: Agent) -> None:
    agent.expect_attach()
    agent.attach("a1", info())
    agent.host.kernel.sizes[WWID] = 128 << 20
    dm = agent.host.kernel.p("/sys/block/dm-0/size")
    dm.write_text(str((128 << 20) // 512))
    att = asyncio.run(agent.service.extend("a1"))
    assert att.device is not None and att.device.size_bytes == 128 << 20
    assert agent.store.get("a1") == att


# ---- reconcile ---------------------------------------------------------------------

def restart(agent: Agent, *, restore: bool = False) -> Service:
    """A new service over the same store and host, as after a crash."""
    return Service(Store(agent.state_dir), {ISCSI: agent.host.connector}, restore=restore)


def test_reconcile_undoes_an_interrupted_attach(agent: Agent) -> None:
    agent.expect_attach()
    device = asyncio.run(agent.host.connector.attach(
        agent.request("x", info()).spec, multipath=True))  # the host got this far...
    agent.store.put(Attachment(  # ...and the row still says attaching
        id="a1", protocol=ISCSI, connection_info=redact_connection_info(info()),
        multipath=True, digest="d", status=Status.ATTACHING, created_at=1.0, updated_at=1.0,
        phase="building the multipath map"))
    agent.expect_release()
    counts = asyncio.run(restart(agent).reconcile())
    assert counts["rolled_back"] == 1
    agent.host.executor.assert_done()
    assert agent.host.kernel.dm_of(device.wwn) is None
    assert not agent.host.kernel.p("/sys/class/scsi_device").exists() or \
        not list(agent.host.kernel.p("/sys/class/scsi_device").iterdir())
    row = agent.store.get("a1")
    assert row is not None and row.status == Status.FAILED
    assert row.last_error is not None and row.last_error["code"] == "interrupted"
    assert f"/{WWID}/" not in agent.host.kernel.p("/etc/multipath/wwids").read_text()


def test_reconcile_finishes_an_interrupted_detach(agent: Agent) -> None:
    agent.expect_attach()
    agent.attach("a1", info())
    agent.store.update("a1", status=Status.DETACHING, phase="removing the disks")
    agent.expect_release()
    counts = asyncio.run(restart(agent).reconcile())
    assert counts["detached"] == 1
    agent.host.executor.assert_done()
    row = agent.store.get("a1")
    assert row is not None and row.status == Status.DETACHED


def test_reconcile_marks_a_vanished_device_and_leaves_others_alone(agent: Agent) -> None:
    agent.expect_attach()
    agent.attach("a1", info())
    agent.host.kernel.luns[(K2, 1)] = "3" + "6" * 32
    agent.expect_attach(K2)  # a volume attached, then its map removed behind our back
    k2, _ = agent.attach("a2", info(K2, 1))
    assert k2.device is not None
    agent.host.kernel.remove_map(k2.device.wwn)
    counts = asyncio.run(restart(agent).reconcile())
    assert counts == {"rolled_back": 0, "detached": 0, "vanished": 1, "restoring": 0,
                      "failed": 0}
    a1, a2 = agent.store.get("a1"), agent.store.get("a2")
    assert a1 is not None and a1.status == Status.ATTACHED
    assert a2 is not None and a2.status == Status.FAILED
    assert a2.last_error is not None and a2.last_error["code"] == "device_vanished"


def test_the_database_is_private(agent: Agent) -> None:
    assert (agent.state_dir / DB_NAME).stat().st_mode & 0o777 == 0o600


def test_the_claims_follow_the_store_at_each_read_with_parsed_rows_cached(
        tmp_path: Path) -> None:
    """Each read of a ClaimsSource sees the store of that moment (the parsed
    connection_info is cached per row version, never per read)."""
    from dataclasses import replace

    from hostagent.models import device_from_dict

    store = Store(tmp_path / "state")
    service = Service(store, {})
    dev = device_from_dict({"path": "/dev/dm-0", "wwn": WWID, "multipath": True,
                            "size_bytes": 1, "missing": [], "iscsi_targets": [],
                            "paths": [{"device": "sda", "hctl": "3:0:0:1", "portal": P1,
                                       "target": K2}]})
    store.put(Attachment("other", ISCSI, info(K2, 1), True, "d" * 64, Status.ATTACHED,
                         1.0, 1.0, device=dev))
    store.put(Attachment("me", ISCSI, info(K2, 2), True, "e" * 64, Status.ATTACHING, 2.0, 2.0))
    read = service.claims_for("me")
    assert read().hctls == {"3:0:0:1"} and read().wwids == {WWID}
    assert (K2, P1) in read().sessions
    store.update("other", device=replace(dev, paths=(replace(dev.paths[0], hctl="5:0:0:1"),)))
    assert read().hctls == {"5:0:0:1"}
    store.update("other", status=Status.DETACHING)  # on its way out: claims nothing
    assert read().hctls == frozenset() and read().sessions == frozenset()
    store.update("other", status=Status.ATTACHED)
    assert read().wwids == {WWID}
    store.delete("other")
    assert read().wwids == frozenset()
    store.close()
