"""open-iscsi's iscsiadm: exit codes, pure parsers, and the calls hostagent makes.

hostagent keeps its node records under its own iface ("hostagent") so that its
sessions are told apart from anyone else's (sysfs iscsi_session/ifacename), and
writes CHAP secrets straight into the root-only record files rather than on an
iscsiadm command line, where `ps` would show them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from hostagent.errors import (
    AuthenticationFailed,
    CommandFailed,
    DaemonUnavailable,
    HostCommandError,
    LoginFailed,
    PortalUnreachable,
)
from hostagent.host.clock import SYSTEM_CLOCK, Clock
from hostagent.host.executor import Executor
from hostagent.host.fs import ETC_ISCSI, ISCSI_LOCK_DIR, VAR_LIB_ISCSI, HostFS
from hostagent.models import Chap, Portal

ISCSIADM = "iscsiadm"
IDBM_LOCK_FILE = f"{ISCSI_LOCK_DIR}/lock"
IDBM_LOCK_WRITE_FILE = f"{ISCSI_LOCK_DIR}/lock.write"
IDBM_LOCK_TRIES = 3000  # x 10 ms, as idbm_lock
DB_ATTEMPTS = 3
DISCOVERY_ATTEMPTS = 3
DISCOVERY_BACKOFF = 0.5  # s, times the attempt number
log = logging.getLogger("hostagent.host")


class IscsiErr(IntEnum):
    """Exit codes of iscsiadm (open-iscsi include/iscsi_err.h)."""

    SUCCESS = 0
    GENERIC = 1
    SESS_NOT_FOUND = 2
    NOMEM = 3
    TRANS = 4
    LOGIN = 5
    IDBM = 6
    INVAL = 7
    TRANS_TIMEOUT = 8
    INTERNAL = 9
    LOGOUT = 10
    PDU_TIMEOUT = 11
    TRANS_NOT_FOUND = 12
    ACCESS = 13
    TRANS_CAPS = 14
    SESS_EXISTS = 15
    INVALID_MGMT_REQ = 16
    ISNS_UNAVAILABLE = 17
    ISCSID_COMM_ERR = 18
    FATAL_LOGIN = 19
    ISCSID_NOTCONN = 20
    NO_OBJS_FOUND = 21
    SYSFS_LOOKUP = 22
    HOST_NOT_FOUND = 23
    LOGIN_AUTH_FAILED = 24
    ISNS_QUERY = 25
    ISNS_REG_FAILED = 26
    OP_NOT_SUPP = 27
    BUSY = 28
    AGAIN = 29
    UNKNOWN_DISCOVERY_TYPE = 30
    CHILD_TERMINATED = 31
    SESSION_NOT_CONNECTED = 32


@dataclass(frozen=True)
class DiscoveredTarget:
    portal: Portal
    tpgt: int
    iqn: str


_DISCOVERY_LINE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^\s,\[\]]+)):(?P<port>\d+),"
                             r"(?P<tpgt>-?\d+)\s+(?P<iqn>\S+)$")


def parse_discovery(out: str) -> list[DiscoveredTarget]:
    """Parse SendTargets output lines: 'ip:port,tpgt iqn' ('[v6]:port,tpgt iqn')."""
    found = []
    for line in out.splitlines():
        m = _DISCOVERY_LINE.match(line.strip())
        if m:
            host = m["v6"] or m["host"]
            found.append(DiscoveredTarget(Portal(host, int(m["port"])), int(m["tpgt"]), m["iqn"]))
    return found


def edit_record(text: str, settings: Mapping[str, str]) -> str:
    """Set `name = value` lines in an iscsiadm record file, keeping the others."""
    lines = []
    for line in text.splitlines():
        name = line.split("=", 1)[0].strip()
        if name not in settings:
            lines.append(line)
    lines += [f"{name} = {value}" for name, value in settings.items()]
    return "\n".join(lines) + "\n"


def chap_settings(chap: Chap | None, prefix: str) -> dict[str, str]:
    """CHAP lines for a node (prefix node.session.auth) or discovery record."""
    if chap is None:
        return {f"{prefix}.authmethod": "None"}
    settings = {f"{prefix}.authmethod": "CHAP", f"{prefix}.username": chap.username,
                f"{prefix}.password": chap.password}
    if chap.username_in and chap.password_in:
        settings[f"{prefix}.username_in"] = chap.username_in
        settings[f"{prefix}.password_in"] = chap.password_in
    return settings


def record_portal(portal: Portal) -> str:
    """A portal as iscsiadm names record directories: 'host,port'."""
    return f"{portal.host},{portal.port}"


class Iscsiadm:
    def __init__(self, executor: Executor, fs: HostFS, *, iface: str = "hostagent",
                 timeout: float = 30.0, clock: Clock = SYSTEM_CLOCK) -> None:
        self.executor = executor
        self.fs = fs
        self.iface = iface
        self.timeout = timeout
        self.clock = clock
        self.node_db = self._node_db()
        self._iface_ready = False
        self._db_lock: asyncio.Lock | None = None
        self._db_loop: asyncio.AbstractEventLoop | None = None
        self._flights: dict[tuple[str, Chap | None], asyncio.Future[list[DiscoveredTarget]]] = {}
        self._flights_loop: asyncio.AbstractEventLoop | None = None

    def _db(self) -> asyncio.Lock:
        """Serialises changes to the node db: parallel `iscsiadm -o new` for different
        targets fail with IDBM (6) when one walks a record another is writing."""
        loop = asyncio.get_running_loop()
        if self._db_lock is None or self._db_loop is not loop:
            self._db_lock, self._db_loop = asyncio.Lock(), loop
        return self._db_lock

    @contextlib.asynccontextmanager
    async def _idbm_lock(self) -> AsyncIterator[None]:
        """open-iscsi's own node-db lock (idbm_lock: link lock -> lock.write, retried
        every 10 ms), held around our in-place record edits so that no iscsiadm
        writes a record while we do. Never held around an iscsiadm call: iscsiadm
        takes it itself."""
        self.fs.ensure_file(IDBM_LOCK_FILE, 0o666)
        for _ in range(IDBM_LOCK_TRIES):
            if self.fs.try_link(IDBM_LOCK_FILE, IDBM_LOCK_WRITE_FILE):
                break
            await self.clock.sleep(0.01)
        else:  # as iscsiadm itself does after 30 s: a stale lock must not stop us for good
            log.warning("%s held for %d s; going on as iscsiadm does", IDBM_LOCK_WRITE_FILE,
                        IDBM_LOCK_TRIES // 100)
        try:
            yield
        finally:
            self.fs.unlink(IDBM_LOCK_WRITE_FILE)

    def _node_db(self) -> str:
        # Debian/Ubuntu keep the node db in /etc/iscsi, RHEL in /var/lib/iscsi.
        for candidate in (f"{ETC_ISCSI}/nodes", f"{VAR_LIB_ISCSI}/nodes"):
            if self.fs.exists(candidate):
                return candidate
        return f"{ETC_ISCSI}/nodes"

    async def ensure_iface(self) -> None:
        if self._iface_ready or self.fs.exists(f"{ETC_ISCSI}/ifaces/{self.iface}"):
            self._iface_ready = True
            return
        await self._run(["-m", "iface", "-I", self.iface, "-o", "new"],
                        ok=(IscsiErr.SUCCESS, IscsiErr.SESS_EXISTS))
        self._iface_ready = True

    async def discover(self, portal: Portal, chap: Chap | None) -> list[DiscoveredTarget]:
        """SendTargets without creating records: hostagent makes only the ones it needs.

        Concurrent discoveries of one portal share a single SendTargets: a storm of
        K2 attaches asks the array once, and arrays (LIO among them) drop discovery
        sessions opened in parallel. A dropped one is retried.
        """
        loop = asyncio.get_running_loop()
        if self._flights_loop is not loop:
            self._flights, self._flights_loop = {}, loop
        key = (str(portal), chap)
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(self._discover(portal, chap))
            self._flights[key] = flight
            flight.add_done_callback(lambda _: self._flights.pop(key, None))
        return await asyncio.shield(flight)

    async def _discover(self, portal: Portal, chap: Chap | None) -> list[DiscoveredTarget]:
        for attempt in range(1, DISCOVERY_ATTEMPTS + 1):
            try:
                return await self._send_targets(portal, chap)
            except CommandFailed as err:
                if err.returncode == IscsiErr.LOGIN_AUTH_FAILED:
                    raise AuthenticationFailed(f"{portal} refused our discovery CHAP "
                                               "credentials", portal=str(portal)) from err
                if not _transient(err.returncode) or attempt == DISCOVERY_ATTEMPTS:
                    error = PortalUnreachable if _unreachable(err.returncode) else LoginFailed
                    raise error(f"SendTargets on {portal} failed: {err.message}",
                                portal=str(portal), returncode=err.returncode,
                                attempts=attempt) from err
                log.warning("SendTargets on %s failed (%s); trying again", portal, err.message)
                await self.clock.sleep(DISCOVERY_BACKOFF * attempt)
        raise AssertionError("unreachable")

    async def _send_targets(self, portal: Portal, chap: Chap | None) -> list[DiscoveredTarget]:
        if chap is None:
            return parse_discovery(await self._run(
                ["-m", "discovery", "-t", "st", "-p", str(portal), "-I", self.iface,
                 "-o", "nonpersistent"]))
        base = ["-m", "discoverydb", "-t", "st", "-p", str(portal), "-I", self.iface]
        async with self._db():  # the discoverydb record of the portal is shared
            await self._run([*base, "-o", "new"])
            try:
                await self._edit(self._discovery_record(portal),
                                 chap_settings(chap, "discovery.sendtargets.auth"))
                return parse_discovery(await self._run([*base, "--discover", "-o",
                                                        "nonpersistent"]))
            finally:
                await self._run([*base, "-o", "delete"],
                                ok=(IscsiErr.SUCCESS, IscsiErr.NO_OBJS_FOUND))

    async def create_node(self, iqn: str, portal: Portal, settings: Mapping[str, str]) -> None:
        """A node record under our iface, with `settings` (secrets included) written in."""
        async with self._db():
            await self._run_db(["-m", "node", "-T", iqn, "-p", str(portal), "-I", self.iface,
                                "-o", "new"])
            await self._edit(self.node_record(iqn, portal), settings)

    async def update_node(self, iqn: str, portal: Portal, settings: Mapping[str, str]) -> None:
        async with self._db():
            await self._edit(self.node_record(iqn, portal), settings)

    def node_record(self, iqn: str, portal: Portal) -> str:
        """The record file: '<ip>,<port>' when the TPGT is unknown (static records),
        else '<ip>,<port>,<tpgt>/<iface>'."""
        record = self._our_records(iqn).get(portal)
        if record is not None:
            return record
        raise HostCommandError(f"no node record for {iqn} at {portal}", iqn=iqn,
                               portal=str(portal))

    def has_node(self, iqn: str, portal: Portal) -> bool:
        try:
            self.node_record(iqn, portal)
        except HostCommandError:
            return False
        return True

    def node_portals(self, iqn: str) -> list[Portal]:
        """The portals of our node records for `iqn`."""
        return list(self._our_records(iqn))

    def _our_records(self, iqn: str) -> dict[Portal, str]:
        """Our node records of `iqn` by portal: flat 'ip,port' files made static,
        'ip,port,tpgt/<iface>' made after discovery. Another iface's are not ours."""
        records = {}
        for entry in self.fs.listdir(f"{self.node_db}/{iqn}"):
            host, _, rest = entry.partition(",")
            port = rest.split(",")[0]
            record = f"{self.node_db}/{iqn}/{entry}"
            if "," in rest:
                record, ours = f"{record}/{self.iface}", self.fs.exists(f"{record}/{self.iface}")
            else:
                ours = f"iface.iscsi_ifacename = {self.iface}" in \
                    (self.fs.try_read(record) or "").splitlines()
            if ours and port.isdigit():
                records[Portal(host, int(port))] = record
        return records

    async def login(self, iqn: str, portal: Portal, *, mutual_chap: bool, timeout: float) -> None:
        try:
            await self._run(["-m", "node", "-T", iqn, "-p", str(portal), "-I", self.iface,
                             "--login"], ok=(IscsiErr.SUCCESS, IscsiErr.SESS_EXISTS),
                            timeout=timeout)
        except CommandFailed as err:
            raise _login_error(err, iqn, portal, mutual_chap) from err

    async def logout(self, iqn: str, portal: Portal | None = None) -> None:
        """Our session of `iqn` at `portal`; with no portal, every one of ours of
        `iqn` in one process (iscsiadm matches the sessions by target and iface)."""
        where = ["-p", str(portal)] if portal is not None else []
        await self._run(["-m", "node", "-T", iqn, *where, "-I", self.iface, "--logout"],
                        ok=(IscsiErr.SUCCESS, IscsiErr.NO_OBJS_FOUND))

    async def delete_nodes(self, iqn: str, portals: Iterable[Portal] | None = None) -> None:
        """Our node records of `iqn` (at `portals`, or all) removed as `iscsiadm -o
        delete` removes them: the record, then its directories once empty. Done in
        place: a process per record was most of a detach's CPU time."""
        async with self._db(), self._idbm_lock():
            records = self._our_records(iqn)
            for portal in records if portals is None else portals:
                record = records.get(portal)
                if record is None:
                    continue
                self.fs.unlink(record)
                if record.endswith(f"/{self.iface}"):
                    self.fs.remove_empty_dir(record.rsplit("/", 1)[0])
            self.fs.remove_empty_dir(f"{self.node_db}/{iqn}")

    def _discovery_record(self, portal: Portal) -> str:
        for match in self.fs.glob(f"{ETC_ISCSI}/send_targets/{record_portal(portal)}/st_config"):
            return match
        raise HostCommandError(f"no discovery record for {portal}", portal=str(portal))

    async def _edit(self, record: str, settings: Mapping[str, str]) -> None:
        async with self._idbm_lock():
            self.fs.update_locked(record, lambda text: edit_record(text, settings))

    async def _run_db(self, args: list[str], *,
                      ok: tuple[int, ...] = (IscsiErr.SUCCESS,)) -> str:
        """A node-db change; other processes (os-brick, an operator) may still race us,
        so an IDBM failure is retried a few times."""
        for attempt in range(DB_ATTEMPTS):
            try:
                return await self._run(args, ok=ok)
            except CommandFailed as err:
                if err.returncode != IscsiErr.IDBM or attempt + 1 == DB_ATTEMPTS:
                    raise
                await self.clock.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _run(self, args: list[str], *, ok: tuple[int, ...] = (IscsiErr.SUCCESS,),
                   timeout: float | None = None) -> str:
        try:
            result = await self.executor.run([ISCSIADM, *args], ok_codes=ok,
                                             timeout=timeout or self.timeout)
        except CommandFailed as err:
            if err.returncode in (IscsiErr.ISCSID_NOTCONN, IscsiErr.ISCSID_COMM_ERR):
                raise DaemonUnavailable("iscsid is not running or does not answer",
                                        returncode=err.returncode) from err
            raise
        return result.stdout


def _unreachable(returncode: int) -> bool:
    """The portal refused or dropped the connection, or did not answer in time.

    As open-iscsi sets them (usr/initiator.c): 4 TRANS, the connection failed; 8
    TRANS_TIMEOUT, no connection within the login timer (a refused or unroutable
    connect is retried until then, so it ends as 8 too); 11 PDU_TIMEOUT, connected
    but no login response. In a login these may be about the target's own node (a
    login redirect), not the portal: connectors/backoff.py rests accordingly."""
    return returncode in (IscsiErr.TRANS, IscsiErr.TRANS_TIMEOUT, IscsiErr.PDU_TIMEOUT)


def _transient(returncode: int) -> bool:
    """A discovery that a busy target or network dropped (killed by SIGPIPE when
    the target closed the connection, or a transport/PDU timeout)."""
    return returncode < 0 or _unreachable(returncode)


def _login_error(err: CommandFailed, iqn: str, portal: Portal, mutual: bool) -> Exception:
    rc = err.returncode
    where = {"iqn": iqn, "portal": str(portal), "returncode": rc}
    if rc == IscsiErr.LOGIN_AUTH_FAILED:
        return AuthenticationFailed(f"{portal} refused our CHAP credentials for {iqn}", **where)
    if rc == IscsiErr.FATAL_LOGIN and mutual:
        # A target that fails to prove itself under mutual CHAP shows up as 19, not 24.
        return AuthenticationFailed(
            f"{portal}: non-retryable login failure for {iqn}; with mutual CHAP this is "
            "what a wrong target secret (auth_password_in) gives", **where)
    if rc in (IscsiErr.ISCSID_NOTCONN, IscsiErr.ISCSID_COMM_ERR):
        return DaemonUnavailable("iscsid is not running or does not answer", **where)
    name = IscsiErr(rc).name if rc in set(IscsiErr) else str(rc)
    error = PortalUnreachable if _unreachable(rc) else LoginFailed
    return error(f"login to {iqn} at {portal} failed: {name}", **where)
