"""The attachments the agent made, in SQLite (WAL, file mode 0600).

A row is written before an operation touches the host and after every phase, so
a restart knows what was under way (see service.Service.reconcile). CHAP
secrets are never stored: connection_info is kept with them removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hostagent.errors import AgentRunning, NotFound
from hostagent.models import Attachment, Status, device_from_dict, device_to_dict

DB_NAME = "hostagent.db"
LOCK_NAME = "agent.lock"
FILE_MODE = 0o600
DIR_MODE = 0o700

_SCHEMA = """
CREATE TABLE IF NOT EXISTS attachments (
    id TEXT PRIMARY KEY,
    volume_id TEXT,
    protocol TEXT NOT NULL,
    connection_info TEXT NOT NULL,
    multipath INTEGER NOT NULL,
    digest TEXT NOT NULL,
    status TEXT NOT NULL,
    phase TEXT,
    device TEXT,
    last_error TEXT,
    force INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_COLUMNS = ("id", "volume_id", "protocol", "connection_info", "multipath", "digest", "status",
            "phase", "device", "last_error", "force", "created_at", "updated_at")


def _row(att: Attachment) -> tuple[Any, ...]:
    return (att.id, att.volume_id, att.protocol, json.dumps(att.connection_info),
            int(att.multipath), att.digest, att.status.value, att.phase,
            json.dumps(device_to_dict(att.device)) if att.device else None,
            json.dumps(att.last_error) if att.last_error is not None else None,
            int(att.force), att.created_at, att.updated_at)


def _edited(listed: list[Attachment], edits: list[tuple[str, Attachment | None]]
            ) -> list[Attachment]:
    """A listing of the live rows with a transaction's rows written (None: deleted), in
    the query's order (created_at, id). A changed row keeps its place and a new one
    that is the latest goes last: sorted only otherwise (a sort per commit was most of
    this at N = 129)."""
    if not edits:
        return listed
    rows = {a.id: a for a in listed}
    ordered = True
    for att_id, att in edits:
        if att is None or att.status == Status.DETACHED:
            rows.pop(att_id, None)
            continue
        old = rows.get(att_id)
        if old is None:
            last = next(reversed(rows.values()), None)
            ordered = ordered and (last is None or _order(last) <= _order(att))
        elif old.created_at != att.created_at:
            ordered = False
        rows[att_id] = att  # a key already there keeps its place
    result = list(rows.values())
    if not ordered:
        result.sort(key=_order)
    return result


def _order(att: Attachment) -> tuple[float, str]:
    return att.created_at, att.id


def _attachment(row: sqlite3.Row) -> Attachment:
    return Attachment(
        id=row["id"], volume_id=row["volume_id"], protocol=row["protocol"],
        connection_info=json.loads(row["connection_info"]), multipath=bool(row["multipath"]),
        digest=row["digest"], status=Status(row["status"]), phase=row["phase"],
        device=device_from_dict(json.loads(row["device"])) if row["device"] else None,
        last_error=json.loads(row["last_error"]) if row["last_error"] else None,
        force=bool(row["force"]), created_at=row["created_at"], updated_at=row["updated_at"])


def _state_dir(state_dir: str | Path) -> Path:
    directory = Path(state_dir)
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(directory, DIR_MODE)  # also when it was there before, looser
    return directory


def claim_directory(state_dir: str | Path) -> int:
    """Hold the state directory for this process: one daemon per directory, so a
    second one cannot reconcile (undo) the first one's operations or take its
    socket. The lock lives as long as the returned descriptor, i.e. the process."""
    path = _state_dir(state_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AgentRunning(f"another hostagent (pid {holder}) serves {state_dir}; this one "
                           "stops and leaves its socket, state and operations alone",
                           state_dir=str(state_dir), pid=holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Store:
    def __init__(self, state_dir: str | Path) -> None:
        directory = _state_dir(state_dir)
        self.path = directory / DB_NAME
        # Created 0600 before SQLite opens it: the umask must not decide.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, FILE_MODE))
        os.chmod(self.path, FILE_MODE)
        self._lock = threading.Lock()
        # Decoded rows by id, with the raw row they came from: a row that has not
        # changed is not decoded again (JSON of connection_info and the device), and
        # the same Attachment object comes back, so callers may cache by identity.
        self._decoded: dict[str, tuple[tuple[Any, ...], Attachment]] = {}
        # The last list() by (revision, include_detached): commits of this connection
        # are counted in _writes, other connections' by SQLite's data_version. This
        # connection's own writes edit the live listing in place (_edits) instead of
        # dropping it: a query and a decode check of every row at each of an
        # operation's commits were O(N) each (run G: 0.10 s of a detach at N = 129).
        self._writes = 0
        self._listed: tuple[tuple[int, int, bool], list[Attachment]] | None = None
        self._edits: list[tuple[str, Attachment | None]] = []  # this transaction's rows
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged attach survives power loss
        self._db.executescript(_SCHEMA)
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                os.chmod(side, FILE_MODE)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            # Current if no commit came since it was made (none can come before ours).
            writes, version = self._revision()
            kept = self._listed[1] if self._listed and \
                self._listed[0] == (writes, version, False) else None
            self._edits = []
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._writes += 1
            # Our own commit leaves data_version as it was; one of another connection's
            # made after it is seen by the next list().
            self._listed = None if kept is None else (
                (self._writes, version, False), _edited(kept, self._edits))

    def _revision(self) -> tuple[int, int]:
        """Changes whenever the table may have changed; call under _lock."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        return self._writes, int(version)

    def _decode(self, row: sqlite3.Row) -> Attachment:
        raw = tuple(row)
        cached = self._decoded.get(row["id"])
        if cached is not None and cached[0] == raw:
            return cached[1]
        att = _attachment(row)
        self._decoded[att.id] = (raw, att)
        return att

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def key(self) -> bytes:
        """A random key made once per host: request digests are keyed with it, so
        the database holds no plain hash of a request that carried a secret."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'digest_key'").fetchone()
            if row is None:
                value = secrets.token_hex(32)
                db.execute("INSERT INTO meta VALUES ('digest_key', ?)", (value,))
                return bytes.fromhex(value)
            return bytes.fromhex(row["value"])

    def get(self, attachment_id: str) -> Attachment | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM attachments WHERE id = ?",
                                   (attachment_id,)).fetchone()
            return self._decode(row) if row else None

    def list(self, *, include_detached: bool = False) -> list[Attachment]:
        query = "SELECT * FROM attachments"
        if not include_detached:
            query += f" WHERE status != '{Status.DETACHED.value}'"
        with self._lock:
            revision = (*self._revision(), include_detached)
            if self._listed is not None and self._listed[0] == revision:
                return list(self._listed[1])
            rows = self._db.execute(query + " ORDER BY created_at, id").fetchall()
            listed = [self._decode(r) for r in rows]
            if not include_detached:  # forget rows gone or detached (kept for get())
                seen = {a.id for a in listed}
                self._decoded = {k: v for k, v in self._decoded.items()
                                 if k in seen or v[1].status == Status.DETACHED}
            self._listed = (revision, listed)
            return list(listed)

    def put(self, att: Attachment) -> None:
        """Insert or replace the whole row."""
        marks = ", ".join("?" for _ in _COLUMNS)
        raw = _row(att)
        with self._tx() as db:
            db.execute(f"INSERT OR REPLACE INTO attachments ({', '.join(_COLUMNS)}) "
                       f"VALUES ({marks})", raw)
            self._decoded[att.id] = (raw, att)
            self._edits.append((att.id, att))

    def update(self, attachment_id: str, **changes: Any) -> Attachment:
        """Change some fields (and updated_at) of a row that must exist."""
        if "id" in changes:
            raise ValueError("an attachment's id does not change")
        with self._tx() as db:
            row = db.execute("SELECT * FROM attachments WHERE id = ?",
                             (attachment_id,)).fetchone()
            if row is None:
                raise NotFound(f"no attachment {attachment_id}", attachment_id=attachment_id)
            att = dataclasses.replace(self._decode(row), updated_at=time.time(), **changes)
            marks = ", ".join(f"{c} = ?" for c in _COLUMNS[1:])
            raw = _row(att)
            db.execute(f"UPDATE attachments SET {marks} WHERE id = ?", (*raw[1:], att.id))
            self._decoded[att.id] = (raw, att)  # what a SELECT of the row gives back
            self._edits.append((att.id, att))
        return att

    def delete(self, attachment_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM attachments WHERE id = ?", (attachment_id,))
            self._decoded.pop(attachment_id, None)
            self._edits.append((attachment_id, None))

    def purge_detached(self, older_than: float) -> int:
        with self._tx() as db:
            cur = db.execute("DELETE FROM attachments WHERE status = ? AND updated_at < ?",
                             (Status.DETACHED.value, older_than))
            self._decoded = {k: v for k, v in self._decoded.items()
                             if v[1].status != Status.DETACHED}
            return int(cur.rowcount)
