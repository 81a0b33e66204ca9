"""The attachment store: file modes, round trips, listing, updates, purge, the
digest key, and what a second Store (a restarted agent) sees."""

from __future__ import annotations

import os
import random
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostagent.agent.state import DB_NAME, Store
from hostagent.errors import NotFound
from hostagent.models import (
    Attachment,
    Device,
    IscsiTarget,
    PathInfo,
    Portal,
    Status,
    device_from_dict,
    device_to_dict,
)

IQN = "iqn.2013-05.com.daterainc:tc:01:sn:4f2a9c0d1e7b3a55"
WWN = "36001405a1b2c3d4e5f60718293a4b5c6"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state")
    yield s
    s.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _device() -> Device:
    return Device(
        path="/dev/dm-3", wwn=WWN, multipath=True, size_bytes=10 * 2**30,
        paths=(PathInfo("sdb", "2:0:0:1", "192.0.2.10:3260", IQN),
               PathInfo("sdc", "3:0:0:1", "[2001:db8::10]:3260", IQN)),
        missing=("198.51.100.7:3260: login timed out",),
        iscsi_targets=(IscsiTarget(Portal("192.0.2.10"), IQN, 1),
                       IscsiTarget(Portal("2001:db8::10", 3261), IQN, 1),
                       IscsiTarget(Portal("fe80::1"), IQN, 1),
                       IscsiTarget(Portal("198.51.100.7"), IQN, 1)))


def _attachment(att_id: str = "att-1", *, status: Status = Status.ATTACHED,
                created_at: float = 1000.0, **kw: Any) -> Attachment:
    fields: dict[str, Any] = {
        "protocol": "iscsi",
        "connection_info": {"driver_volume_type": "iscsi",
                            "data": {"target_iqn": IQN, "target_portal": "192.0.2.10:3260",
                                     "target_lun": 1, "auth_method": "CHAP",
                                     "auth_username": "user"}},
        "multipath": True, "digest": "d" * 64, "status": status,
        "created_at": created_at, "updated_at": created_at, "volume_id": "vol-" + att_id,
    }
    fields.update(kw)
    return Attachment(id=att_id, **fields)


# ---- file modes ---------------------------------------------------------------------

def test_db_and_its_wal_and_shm_are_0600_and_the_dir_0700_under_umask_0(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        directory = tmp_path / "var" / "lib" / "hostagent"
        s = Store(directory)
        try:
            s.put(_attachment())  # a write: the WAL is in use
            db = directory / DB_NAME
            files = {p.name: _mode(p) for p in directory.iterdir()}
            assert files == {DB_NAME: 0o600, f"{DB_NAME}-wal": 0o600, f"{DB_NAME}-shm": 0o600}
            assert _mode(directory) == 0o700
            assert s.path == db
        finally:
            s.close()
    finally:
        os.umask(old)


def test_an_existing_permissive_db_file_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    db = directory / DB_NAME
    db.touch()
    db.chmod(0o644)
    Store(directory).close()
    assert _mode(db) == 0o600


def test_an_existing_permissive_state_dir_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    directory.chmod(0o777)
    Store(directory).close()
    assert _mode(directory) == 0o700


def test_an_id_cannot_be_changed(store: Store) -> None:
    store.put(_attachment())
    with pytest.raises(ValueError, match="does not change"):
        store.update("att-1", id="att-2")


def test_journal_is_wal(store: Store) -> None:
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ---- round trips --------------------------------------------------------------------

def test_device_dict_round_trip_keeps_ipv6_portals() -> None:
    device = _device()
    d = device_to_dict(device)
    assert [t["portal"] for t in d["iscsi_targets"]] == [
        "192.0.2.10:3260", "[2001:db8::10]:3261", "[fe80::1]:3260", "198.51.100.7:3260"]
    assert device_from_dict(d) == device


def test_put_get_round_trips_an_attachment_with_a_device(store: Store) -> None:
    att = _attachment(device=_device(), phase="mapping", force=True,
                      last_error={"code": "login_failed", "message": "x", "details": {"n": 2}})
    store.put(att)
    got = store.get(att.id)
    assert got == att
    assert got is not None
    assert got.device is not None
    assert got.device.iscsi_targets[1].portal == Portal("2001:db8::10", 3261)
    assert got.status is Status.ATTACHED


def test_put_get_round_trips_an_attachment_without_a_device(store: Store) -> None:
    att = _attachment(status=Status.ATTACHING, volume_id=None, multipath=False)
    store.put(att)
    assert store.get(att.id) == att


def test_get_of_a_missing_id_is_none(store: Store) -> None:
    assert store.get("nope") is None


def test_put_replaces_the_whole_row(store: Store) -> None:
    store.put(_attachment(device=_device(), phase="mapping"))
    replaced = _attachment(status=Status.FAILED)
    store.put(replaced)
    assert store.get("att-1") == replaced
    assert len(store.list(include_detached=True)) == 1


# ---- list ---------------------------------------------------------------------------

def test_list_hides_detached_and_orders_by_created_at(store: Store) -> None:
    store.put(_attachment("c", created_at=30.0))
    store.put(_attachment("a", created_at=10.0, status=Status.DETACHED))
    store.put(_attachment("b", created_at=20.0, status=Status.FAILED))
    store.put(_attachment("d", created_at=5.0, status=Status.ATTACHING))
    assert [a.id for a in store.list()] == ["d", "b", "c"]
    assert [a.id for a in store.list(include_detached=True)] == ["d", "a", "b", "c"]


def test_list_of_an_empty_store(store: Store) -> None:
    assert store.list() == []
    assert store.list(include_detached=True) == []


# ---- update / delete / purge --------------------------------------------------------

def test_update_changes_fields_and_bumps_updated_at(store: Store) -> None:
    store.put(_attachment(status=Status.ATTACHING, phase="login"))
    before = time.time()
    att = store.update("att-1", status=Status.ATTACHED, device=_device(), phase=None)
    assert (att.status, att.device, att.phase) == (Status.ATTACHED, _device(), None)
    assert att.updated_at >= before
    assert att.created_at == 1000.0
    assert store.get("att-1") == att  # written, not only returned


def test_update_of_a_missing_id_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as info:
        store.update("ghost", status=Status.DETACHED)
    assert info.value.details == {"attachment_id": "ghost"}
    assert store.get("ghost") is None


def test_update_leaves_other_rows_alone(store: Store) -> None:
    store.put(_attachment("a"))
    store.put(_attachment("b"))
    store.update("a", status=Status.DETACHING, force=True)
    assert store.get("b") == _attachment("b")


def test_delete(store: Store) -> None:
    store.put(_attachment("a"))
    store.put(_attachment("b"))
    store.delete("a")
    store.delete("never-there")  # no error
    assert store.get("a") is None
    assert [a.id for a in store.list()] == ["b"]


def test_purge_detached_removes_only_old_detached_rows(store: Store) -> None:
    store.put(_attachment("old-detached", status=Status.DETACHED, created_at=100.0))
    store.put(_attachment("new-detached", status=Status.DETACHED, created_at=900.0))
    store.put(_attachment("old-failed", status=Status.FAILED, created_at=100.0))
    store.put(_attachment("old-attached", status=Status.ATTACHED, created_at=100.0))
    assert store.purge_detached(older_than=500.0) == 1
    assert [a.id for a in store.list(include_detached=True)] == [
        "old-attached", "old-failed", "new-detached"]
    assert store.purge_detached(older_than=500.0) == 0
    assert store.purge_detached(older_than=1000.0) == 1
    assert store.get("new-detached") is None


def test_purge_goes_by_updated_at_not_created_at(store: Store) -> None:
    store.put(_attachment("a", status=Status.DETACHED, created_at=100.0, updated_at=2000.0))
    assert store.purge_detached(older_than=1000.0) == 0
    assert store.get("a") is not None


# ---- key ----------------------------------------------------------------------------

def test_key_is_32_bytes_and_stable_across_calls_and_reopening(tmp_path: Path) -> None:
    first = Store(tmp_path)
    key = first.key()
    assert isinstance(key, bytes)
    assert len(key) == 32
    assert first.key() == key
    first.close()
    again = Store(tmp_path)
    assert again.key() == key
    again.close()


def test_key_differs_between_hosts(tmp_path: Path) -> None:
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    assert a.key() != b.key()
    a.close()
    b.close()


# ---- a restarted agent --------------------------------------------------------------

def test_a_second_store_on_the_same_dir_sees_the_first_ones_rows(tmp_path: Path) -> None:
    first = Store(tmp_path)
    att = _attachment(device=_device())
    first.put(att)
    first.update("att-1", phase="recording")
    second = Store(tmp_path)  # while the first is still open
    got = second.get("att-1")
    assert got is not None
    assert got.phase == "recording"
    first.close()
    second.close()
    restarted = Store(tmp_path)  # after both closed
    assert restarted.list() == [got]
    restarted.close()


def test_a_failed_update_leaves_the_row_and_the_store_usable(store: Store) -> None:
    store.put(_attachment())
    with pytest.raises(TypeError):
        store.update("att-1", no_such_field=1)
    assert store.get("att-1") == _attachment()
    # The transaction was ended: a new one can begin.
    store.put(_attachment("b"))
    assert store.get("b") is not None


# ---- the decoded-row cache (issue 17: a claims read at every destructive step) ----------

def test_an_unchanged_row_comes_back_as_the_same_object(store: Store) -> None:
    store.put(_attachment("a"))
    store.put(_attachment("b"))
    first = {a.id: a for a in store.list()}
    store.update("a", phase="scanning")
    second = {a.id: a for a in store.list()}
    assert second["b"] is first["b"]  # not decoded again
    assert second["a"] is not first["a"] and second["a"].phase == "scanning"
    assert store.get("b") is first["b"]


def test_a_cached_list_sees_every_write_of_this_store(store: Store) -> None:
    store.put(_attachment("a"))
    assert [a.status for a in store.list()] == [Status.ATTACHED]
    store.update("a", status=Status.DETACHED)
    assert store.list() == []
    assert [a.id for a in store.list(include_detached=True)] == ["a"]
    store.put(_attachment("b"))
    store.delete("b")
    assert store.list() == [] and store.get("b") is None


def test_a_cached_list_sees_another_connections_writes(tmp_path: Path) -> None:
    one, two = Store(tmp_path / "state"), Store(tmp_path / "state")
    try:
        one.put(_attachment("a"))
        assert [a.phase for a in one.list()] == [None]
        assert [a.phase for a in two.list()] == [None]
        two.update("a", phase="logging in")  # the other connection: data_version moves
        assert [a.phase for a in one.list()] == ["logging in"]
        two.put(_attachment("b"))
        assert [a.id for a in one.list()] == ["a", "b"]
    finally:
        one.close()
        two.close()


def _queries(store: Store) -> list[str]:
    """The statements `store` runs from now on."""
    ran: list[str] = []
    store._db.set_trace_callback(ran.append)
    return ran


def test_this_stores_writes_edit_the_kept_listing_without_a_query(tmp_path: Path) -> None:
    store, reader = Store(tmp_path / "state"), Store(tmp_path / "state")
    try:
        for i, created in enumerate((1003.0, 1001.0, 1002.0)):
            store.put(_attachment(f"att-{i}", created_at=created))
        store.list()
        ran = _queries(store)
        store.update("att-1", phase="scanning")
        store.put(_attachment("att-3", created_at=1000.5))
        store.update("att-2", status=Status.DETACHED)
        store.delete("att-0")
        store.put(_attachment("att-4", created_at=1001.0))  # ties att-1: ordered by id
        listed = store.list()
        assert not any(q.startswith("SELECT * FROM attachments ORDER BY") or
                       "WHERE status !=" in q for q in ran), ran
        # What a query of another connection gives: the rows, fields and order.
        assert listed == reader.list()
        assert [a.id for a in listed] == ["att-3", "att-1", "att-4"]
        assert listed[1].phase == "scanning"
    finally:
        store.close()
        reader.close()


def test_a_write_of_another_connection_between_this_stores_writes_is_seen(
        tmp_path: Path) -> None:
    one, two = Store(tmp_path / "state"), Store(tmp_path / "state")
    try:
        one.put(_attachment("a"))
        one.list()
        two.put(_attachment("b", created_at=999.0))
        one.update("a", phase="scanning")  # its listing was stale: not edited, queried anew
        assert [(a.id, a.phase) for a in one.list()] == [("b", None), ("a", "scanning")]
    finally:
        one.close()
        two.close()


def test_a_rolled_back_write_leaves_the_kept_listing_as_it_was(store: Store) -> None:
    store.put(_attachment("a"))
    before = store.list()
    with pytest.raises(TypeError):
        store.update("a", no_such_field=1)
    ran = _queries(store)
    assert store.list() == before
    assert not any("FROM attachments" in q for q in ran), ran


def test_the_kept_listing_matches_a_query_after_any_run_of_writes(tmp_path: Path) -> None:
    store, reader = Store(tmp_path / "state"), Store(tmp_path / "state")
    rng = random.Random(17)
    try:
        store.list()
        for step in range(300):
            ids = [a.id for a in store.list(include_detached=True)]
            op = rng.choice(["new", "new", "update", "detach", "delete", "replace"])
            if op == "new" or not ids:
                # Mostly the latest, as new attachments are; sometimes older, or a tie.
                created = 2000.0 + step if rng.random() < 0.7 else float(rng.randint(1990, 2300))
                store.put(_attachment(f"att-{step:03d}", created_at=created))
            elif op == "update":
                store.update(rng.choice(ids), phase=f"phase {step}")
            elif op == "detach":
                store.update(rng.choice(ids), status=Status.DETACHED)
            elif op == "delete":
                store.delete(rng.choice(ids))
            else:  # the whole row again, created at another time
                store.put(_attachment(rng.choice(ids), created_at=float(rng.randint(1990, 2300))))
            assert store.list() == reader.list(), f"step {step}: {op}"
    finally:
        store.close()
        reader.close()
