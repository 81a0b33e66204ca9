"""Orchestration: idempotent attach/detach/extend over the engines, with state.

Every operation on an attachment holds that attachment's lock from start to
finish, so a retried request waits for the first and then answers from its
result; operations on different attachments only meet at the engines'
per-target locks. An operation runs as a task of its own: a client that goes
away does not cancel an attach half-way.

The state row is written before the host is touched and at every phase, so
`reconcile()` at start-up can finish or undo what a crash interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from hostagent.agent.state import Store
from hostagent.connection_info import FIBRE_CHANNEL, ISCSI, parse
from hostagent.connectors.base import Connector
from hostagent.connectors.devices import note_left
from hostagent.errors import (
    Conflict,
    DeviceBusy,
    DeviceTimeout,
    DeviceVanished,
    HostAgentError,
    InvalidRequest,
    NotFound,
    OperationInProgress,
)
from hostagent.models import (
    RESTORING,
    Attachment,
    Claims,
    ClaimsSource,
    Device,
    FcVolume,
    IscsiVolume,
    PathInfo,
    Status,
    VolumeSpec,
)

log = logging.getLogger("hostagent.service")
T = TypeVar("T")

REDACTED = "***"
# The keys of connection_info that hold a secret, in the data dict.
SECRET_KEYS = frozenset({"auth_password", "auth_password_in", "discovery_auth_password",
                         "discovery_auth_password_in"})
_LIVE = (Status.ATTACHING, Status.ATTACHED, Status.DETACHING)
# What another teardown must leave alone: a detaching attachment is on its way out.
_CLAIMING = (Status.ATTACHING, Status.ATTACHED)


@dataclass(frozen=True)
class AttachRequest:
    attachment_id: str
    connection_info: Mapping[str, Any]
    spec: VolumeSpec
    volume_id: str | None
    multipath: bool
    timeout: float


def protocol_of(spec: VolumeSpec) -> str:
    return FIBRE_CHANNEL if isinstance(spec, FcVolume) else ISCSI


def redact_connection_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """connection_info with every secret replaced by "***" (wrapped or bare form)."""
    def clean(data: Mapping[str, Any]) -> dict[str, Any]:
        return {k: (REDACTED if k in SECRET_KEYS and v not in (None, "") else v)
                for k, v in data.items()}
    if isinstance(info.get("data"), Mapping):
        return {**info, "data": clean(info["data"])}
    return clean(info)


@dataclass(frozen=True)
class _Owned:
    """What one attachment owns on the host, its volume's key and its parsed
    connection_info (parsed once per row version)."""

    spec: VolumeSpec
    wwids: frozenset[str]
    hctls: frozenset[str]
    sessions: frozenset[tuple[str, str]]
    volume: frozenset[tuple[str, int]]


def _owned(att: Attachment) -> _Owned:
    spec = parse(att.connection_info)
    wwids: frozenset[str] = frozenset()
    hctls: frozenset[str] = frozenset()
    sessions: frozenset[tuple[str, str]] = frozenset()
    if att.device is not None:
        wwids = frozenset((att.device.wwn,))
        if att.device.path is not None and att.phase != RESTORING:
            # Only a verified device's addresses: a gone one's are the kernel's to reuse
            # (a restore claims by WWID and sessions until it has disks again).
            hctls = frozenset(p.hctl for p in att.device.paths)
    if isinstance(spec, IscsiVolume):
        targets = (att.device.iscsi_targets if att.device else ()) or spec.targets
        sessions = frozenset((t.iqn, str(t.portal)) for t in targets)
    return _Owned(spec, wwids, hctls, sessions, _volume_key(spec))


def _union(owned: Iterable[_Owned]) -> Claims:
    wwids: set[str] = set()
    hctls: set[str] = set()
    sessions: set[tuple[str, str]] = set()
    for o in owned:
        wwids |= o.wwids
        hctls |= o.hctls
        sessions |= o.sessions
    return Claims(frozenset(wwids), frozenset(hctls), frozenset(sessions))


def claims_of(others: Iterable[Attachment]) -> Claims:
    """What `others` own on the host: their volumes' WWIDs, their disks' H:C:T:L and
    the (IQN, portal) sessions they expect, a session whose path is down included."""
    return _union(_owned(att) for att in others)


def _volume_key(spec: VolumeSpec) -> frozenset[tuple[str, int]]:
    """What identifies the volume on this host: (target, LUN) pairs."""
    if isinstance(spec, FcVolume):
        return frozenset((w, spec.lun) for w in spec.target_wwpns)
    return frozenset((t.iqn, t.lun) for t in spec.targets)


class Service:
    def __init__(self, store: Store, connectors: Mapping[str, Connector], *,
                 multipath: bool = True, attach_timeout: float = 180.0,
                 detach_timeout: float = 180.0, detached_retention: float = 86400.0,
                 observe: Callable[[str, float, bool], None] | None = None,
                 on_phase: Callable[[str], None] | None = None, restore: bool = True) -> None:
        self.store = store
        self.restore = restore  # attached volumes gone at start-up are made again
        self.connectors = connectors
        self.multipath = multipath
        self.attach_timeout = attach_timeout
        self.detach_timeout = detach_timeout
        self.detached_retention = detached_retention
        self._key = store.key()
        # What each attachment owns, parsed once per row version: the claims are read
        # from the store at every destructive step, and re-parsing every live
        # attachment's connection_info there made each step O(N), the run O(N^2).
        # Keyed by the Attachment object the store hands out (the same object while
        # its row is unchanged), so the claims still reflect the store of that moment.
        self._owned: dict[str, tuple[Attachment, _Owned]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_phase = on_phase  # the crash test hook: every phase is a place to die
        # (operation, seconds, succeeded) of every attach, detach and extend: metrics.
        self._observe = observe

    # ---- queries -----------------------------------------------------------------
    def get(self, attachment_id: str) -> Attachment:
        att = self.store.get(attachment_id)
        if att is None:
            raise NotFound(f"no attachment {attachment_id}", attachment_id=attachment_id)
        return att

    def list(self) -> list[Attachment]:
        return self.store.list()

    def connector_properties(self) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for connector in self.connectors.values():
            props.update(connector.connector_properties(multipath=self.multipath))
        return props

    def digest(self, req: AttachRequest) -> str:
        body = json.dumps({"connection_info": req.connection_info, "volume_id": req.volume_id,
                           "multipath": req.multipath}, sort_keys=True, separators=(",", ":"))
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def engine_for(self, protocol: str) -> Connector:
        connector = self.connectors.get(protocol)
        if connector is None:
            raise InvalidRequest("connection_info.driver_volume_type",
                                 f"this agent has no {protocol} engine",
                                 engines=sorted(self.connectors))
        return connector

    # ---- attach ------------------------------------------------------------------
    async def attach(self, req: AttachRequest) -> tuple[Attachment, bool]:
        """The attachment, and whether this call made it (False: a retry's answer)."""
        connector = self.engine_for(protocol_of(req.spec))
        digest = self.digest(req)
        async with self._lock(req.attachment_id):
            existing = self.store.get(req.attachment_id)
            if existing is not None and existing.status != Status.DETACHED:
                if existing.digest != digest:
                    raise Conflict(f"attachment {req.attachment_id} exists with another "
                                   "request", attachment_id=req.attachment_id)
                if existing.status == Status.ATTACHED and existing.phase == RESTORING:
                    # Its recorded names may be another volume's by now: no device to
                    # answer with until the restore has made and verified one.
                    raise OperationInProgress(
                        f"attachment {req.attachment_id} is being restored after the "
                        "agent's start; ask again once it is back",
                        attachment_id=req.attachment_id, phase=RESTORING,
                        reason=(existing.last_error or {}).get("message"))
                if existing.status == Status.ATTACHED:
                    return existing, False
                if existing.status == Status.DETACHING:
                    raise OperationInProgress(
                        f"attachment {req.attachment_id} is being detached; finish the "
                        "detach first", attachment_id=req.attachment_id)
            self._refuse_second_attachment(req)
            now = time.time()
            self.store.put(Attachment(
                id=req.attachment_id, protocol=protocol_of(req.spec),
                connection_info=redact_connection_info(req.connection_info),
                multipath=req.multipath, digest=digest, status=Status.ATTACHING,
                created_at=now, updated_at=now, volume_id=req.volume_id, phase="starting"))
            log.info("attach %s: %s volume %s", req.attachment_id, protocol_of(req.spec),
                     req.volume_id or "-")
            return await self._timed("attach", self._attach(connector, req)), True

    def _refuse_second_attachment(self, req: AttachRequest) -> None:
        other = self._sharer(req.attachment_id, req.spec, _LIVE)
        if other is not None:
            raise Conflict(f"the volume is already attached as {other.id}",
                           attachment_id=other.id)

    async def _attach(self, connector: Connector, req: AttachRequest) -> Attachment:
        att_id = req.attachment_id
        try:
            async with asyncio.timeout(req.timeout):
                device = await connector.attach(req.spec, multipath=req.multipath,
                                                progress=self._progress(att_id),
                                                claims=self.claims_for(att_id))
        except TimeoutError:
            err: HostAgentError = DeviceTimeout(
                f"the attach did not finish within {req.timeout:g} s; what it did was undone",
                timeout=req.timeout)
            self._failed(att_id, Status.FAILED, err)
            raise err from None
        except BaseException as exc:
            self._failed(att_id, Status.FAILED, exc)
            raise
        try:
            self._progress(att_id)("recording")
            att = self.store.update(att_id, status=Status.ATTACHED, device=device, phase=None,
                                    last_error=None)
        except BaseException as exc:
            # The device exists but the record of it does not (a full disk, a shutdown):
            # undone now, or the row stays `attaching` and the next start undoes it.
            await self.undo_unrecorded(att_id, req.spec, device, exc)
            raise
        log.info("attached %s: %s (%s, %d paths%s)", att_id, device.path, device.wwn,
                 len(device.paths), f", missing {list(device.missing)}" if device.missing else "")
        return att

    async def undo_unrecorded(self, att_id: str, spec: VolumeSpec, device: Device,
                              exc: BaseException) -> None:
        """Undo an attach or restore whose device the store could not record. No force:
        a map a consumer opened meanwhile stays, and the error says what was left and
        why. The row ends `failed` if the store takes that write."""
        log.error("%s: recording the device failed (%s); undoing it", att_id,
                  _error_dict(exc)["message"])
        left: list[str] = []
        try:
            result = await self.engine_for(protocol_of(spec)).detach(
                spec, device, force=False, claims=self.claims_for(att_id))
            left = list(result.warnings)
        except Exception as undo:
            left = [_error_dict(undo)["message"]]
            log.error("%s: undoing it left: %s", att_id, left[0])
        note_left(exc, left)  # on a HostAgentError its details, else a note
        error = _error_dict(exc)
        if left:
            error["details"].setdefault("left_on_host", left)
        with contextlib.suppress(Exception):  # the store may refuse every write now
            self.store.update(att_id, status=Status.FAILED, phase=None, last_error=error)

    # ---- detach ------------------------------------------------------------------
    async def detach(self, attachment_id: str, *, force: bool = False) -> Attachment:
        async with self._lock(attachment_id):
            att = self.get(attachment_id)
            if att.status == Status.DETACHED:
                return att  # a retried detach: already done
            connector = self.engine_for(att.protocol)
            self.store.update(attachment_id, status=Status.DETACHING, force=force,
                              phase="starting")
            log.info("detach %s%s", attachment_id, " (force)" if force else "")
            return await self._timed("detach", self._detach(connector, att, force))

    async def _detach(self, connector: Connector, att: Attachment, force: bool) -> Attachment:
        spec = parse(att.connection_info)
        sharer = self._sharer(att.id, spec)
        claims = self.claims_for(att.id)
        try:
            async with asyncio.timeout(self.detach_timeout):
                warnings: tuple[str, ...] = ()
                if sharer is not None:
                    # Everything of the volume on this host is the live attachment's now.
                    warnings = (f"the volume is attached as {sharer.id}: nothing of it on "
                                "the host was touched",)
                elif att.device is None or att.device.path is None:
                    # The attach never finished, or the device is gone (a restore that
                    # has not made it again): what of the volume is there is found anew.
                    await connector.recover(spec, claims)
                else:
                    result = await connector.detach(spec, att.device, force=force,
                                                    progress=self._progress(att.id),
                                                    claims=claims)
                    warnings = result.warnings
        except TimeoutError:
            err = DeviceTimeout(f"the detach did not finish within {self.detach_timeout:g} s",
                                timeout=self.detach_timeout)
            self._failed(att.id, Status.DETACHING, err)
            raise err from None
        except DeviceBusy as busy:
            if force or att.device is None:
                self._failed(att.id, Status.DETACHING, busy)
                raise
            # Refused before anything was torn down: the map is there and in use.
            self._failed(att.id, Status.ATTACHED, busy)
            raise
        except BaseException as exc:
            self._failed(att.id, Status.DETACHING, exc)
            raise
        for warning in warnings:
            log.warning("detach %s: %s", att.id, warning)
        code = "forced" if force else "left_alone"
        last_error = {"code": code, "message": "; ".join(warnings), "details": {}} \
            if warnings else None
        done = self.store.update(att.id, status=Status.DETACHED, phase=None,
                                 last_error=last_error)
        log.info("detached %s", att.id)
        return done

    # ---- extend ------------------------------------------------------------------
    async def extend(self, attachment_id: str) -> Attachment:
        async with self._lock(attachment_id):
            att = self.get(attachment_id)
            if att.status != Status.ATTACHED or att.device is None or att.device.path is None:
                raise Conflict(f"attachment {attachment_id} is {att.status.value}"
                               f"{f' ({att.phase})' if att.phase else ''}, not attached "
                               "with a device", status=att.status.value, phase=att.phase)
            connector = self.engine_for(att.protocol)
            device = att.device
            size = await self._timed("extend", connector.extend(parse(att.connection_info),
                                                                device))
            att = self.store.update(attachment_id, device=replace(device, size_bytes=size))
            log.info("extended %s: %s is %d bytes", attachment_id, device.path, size)
            return att

    # ---- self-healing --------------------------------------------------------------
    def record_path(self, attachment_id: str, label: str, path: PathInfo) -> Attachment:
        """A path self-healing made joins the attachment's device, so a detach removes
        it; it replaces the path it stands for, and that path is no longer missing."""
        att = self.get(attachment_id)
        if att.device is None or att.device.path is None:
            raise Conflict(f"attachment {attachment_id} has no device", attachment_id=att.id)
        paths = [p for p in att.device.paths
                 if p.hctl != path.hctl and not (path.portal and p.portal == path.portal)]
        missing = tuple(m for m in att.device.missing if not m.startswith(label))
        return self.store.update(attachment_id, device=replace(
            att.device, paths=(*paths, path), missing=missing))

    # ---- start-up ------------------------------------------------------------------
    async def reconcile(self) -> dict[str, int]:
        """Finish or undo what a crash interrupted; mark attached volumes that vanished.

        Only hostagent's own records are acted on, and through them only its own
        sessions (its iface), its disks and its maps.
        """
        counts = {"rolled_back": 0, "detached": 0, "vanished": 0, "restoring": 0, "failed": 0}
        self.store.purge_detached(time.time() - self.detached_retention)
        for att in self.store.list():
            try:
                if att.status == Status.ATTACHING:
                    await self._roll_back(att)
                    counts["rolled_back"] += 1
                elif att.status == Status.DETACHING:
                    await self.detach(att.id, force=att.force)
                    counts["detached"] += 1
                elif att.status == Status.ATTACHED and att.device is not None:
                    self._verify(att, att.device, counts)
            except Exception as exc:  # one attachment's trouble must not stop the rest
                self._reconcile_failed(att, exc)
                counts["failed"] += 1
        log.info("reconciled: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
        return counts

    def _verify(self, att: Attachment, device: Device, counts: dict[str, int]) -> None:
        """An attached volume's device read again: its names as they are now (answers
        carry no name unverified since the agent started), or gone."""
        now = self.engine_for(att.protocol).current(device)
        if now is not None:
            if now != device:
                log.warning("reconcile %s: its device is %s now (recorded %s, %d of %d "
                            "paths)", att.id, now.path, device.path, len(now.paths),
                            len(device.paths))
                self.store.update(att.id, device=now)
            return
        # Its old dm-N or sdX named in no answer, not even this one: the kernel's now.
        err = DeviceVanished(f"the volume's device ({device.wwn}) is gone", wwn=device.wwn)
        # Its names go with it: from now on they are the kernel's to reuse.
        gone = device.without_kernel_names()
        if self.restore:  # made again once the API serves (agent/restore.py)
            self.store.update(att.id, phase=RESTORING, device=gone, last_error=err.to_dict())
            counts["restoring"] += 1
        else:
            self.store.update(att.id, status=Status.FAILED, device=gone,
                              last_error=err.to_dict())
            counts["vanished"] += 1
        log.warning("reconcile %s: %s", att.id, err.message)

    def _reconcile_failed(self, att: Attachment, exc: Exception) -> None:
        error = _error_dict(exc)
        log.error("reconcile %s (%s): %s", att.id, att.status.value, error["message"])
        with contextlib.suppress(HostAgentError):
            self.store.update(att.id, last_error=error)

    async def _roll_back(self, att: Attachment) -> None:
        async with self._lock(att.id):
            log.warning("reconcile %s: the attach was interrupted; undoing it", att.id)
            self.store.update(att.id, phase="rolling back")
            await self.engine_for(att.protocol).recover(parse(att.connection_info),
                                                        self.claims_for(att.id))
            self.store.update(att.id, status=Status.FAILED, phase=None, last_error={
                "code": "interrupted", "details": {},
                "message": "the agent stopped during the attach; what it had done was undone"})

    async def close(self) -> None:
        """Wait for running operations: they end in a recorded state."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- helpers -------------------------------------------------------------------
    def claims_for(self, attachment_id: str) -> ClaimsSource:
        """What every other live attachment owns, read from the store when asked."""
        def read() -> Claims:
            return _union(self._owned_by(a) for a in self.store.list()
                          if a.id != attachment_id and a.status in _CLAIMING)
        return read

    def spec_of(self, att: Attachment) -> VolumeSpec:
        """The row's parsed connection_info: parsed once while the row is unchanged (the
        store hands out a new object only when a row changes)."""
        return self._owned_by(att).spec

    def _owned_by(self, att: Attachment) -> _Owned:
        cached = self._owned.get(att.id)
        if cached is not None and cached[0] is att:
            return cached[1]
        owned = _owned(att)
        if len(self._owned) >= 16384:  # ids of detached rows: never unbounded
            self._owned.clear()
        self._owned[att.id] = (att, owned)
        return owned

    def _sharer(self, attachment_id: str, spec: VolumeSpec,
                statuses: tuple[Status, ...] = _CLAIMING) -> Attachment | None:
        """Another attachment of the same volume in one of `statuses`."""
        key = _volume_key(spec)
        return next((a for a in self.store.list() if a.id != attachment_id
                     and a.status in statuses and self._owned_by(a).volume & key), None)

    def _lock(self, attachment_id: str) -> asyncio.Lock:
        return self._locks.setdefault(attachment_id, asyncio.Lock())

    def attachment_lock(self, attachment_id: str) -> asyncio.Lock:
        """The lock every operation on the attachment holds (self-healing takes it too)."""
        return self._lock(attachment_id)

    async def _timed(self, operation: str, coro: Awaitable[T]) -> T:
        start = time.monotonic()
        ok = False
        try:
            result = await self._run(coro)
            ok = True
            return result
        finally:
            if self._observe is not None:
                self._observe(operation, time.monotonic() - start, ok)

    async def _run(self, coro: Awaitable[T]) -> T:
        """Run an operation as its own task; the caller going away does not stop it."""
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    def _progress(self, attachment_id: str) -> Callable[[str], None]:
        def report(phase: str) -> None:
            log.info("%s: %s", attachment_id, phase)
            with contextlib.suppress(NotFound):
                self.store.update(attachment_id, phase=phase)
            if self._on_phase is not None:
                self._on_phase(phase)
        return report

    def _failed(self, attachment_id: str, status: Status, exc: BaseException) -> None:
        error = _error_dict(exc)
        self.store.update(attachment_id, status=status, phase=None, last_error=error)
        log.error("%s failed: %s", attachment_id, error["message"])


def _error_dict(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, HostAgentError):
        return exc.to_dict()
    if isinstance(exc, asyncio.CancelledError):
        return {"code": "cancelled", "message": "the agent is shutting down", "details": {}}
    return {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}", "details": {}}
