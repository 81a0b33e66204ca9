"""Preflight: is this node ready to attach SAN volumes, and if not, what to do.

Each check has a stable id, a status (pass, warn, fail), a detail saying what
was found, and for anything not passing a remedy, with the package names for
Debian/Ubuntu and RHEL where a package is the fix. Deciding a check's status is
pure (functions of what was read); `Preflight` only gathers.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hostagent.errors import CommandNotFound, HostAgentError
from hostagent.host import fc
from hostagent.host.executor import Executor
from hostagent.host.fs import (
    BIN_DIRS,
    ETC_ISCSI,
    MULTIPATH_CONF,
    MULTIPATH_CONF_DIR,
    SYS_MODULE,
    HostFS,
)
from hostagent.host.iscsiadm import IscsiErr
from hostagent.host.multipath import MultipathdClient
from hostagent.host.net import HOST_LOCAL_NET, LocalNet, Net, Route, host_ip, is_loopback
from hostagent.models import Portal
from hostagent.node.mpathconf import (
    Block,
    HostDefault,
    MappedTimeouts,
    MultipathConfig,
    Stanza,
    blacklisted_by,
    effective,
    mapped_timeouts,
    stanza_differences,
)
from hostagent.node.udevrule import FORWARD, OVERRIDE, SKIP, Rules, RuleState, UdevRule, state

INITIATOR_FILE = f"{ETC_ISCSI}/initiatorname.iscsi"
ISCSID_CONF = f"{ETC_ISCSI}/iscsid.conf"
COMMAND_TIMEOUT = 15.0
CONNECT_TIMEOUT = 3.0
# With multipath a dead path must fail fast so I/O moves on: open-iscsi's 120 s
# default replacement_timeout holds I/O that long (os-brick and the array
# vendors' guides ask for a few seconds to about 20). On a session a map uses,
# multipathd replaces it with fast_io_fail_tmo (mpathconf.mapped_timeouts), so the
# limit applies to whichever of the two a mapped session really gets.
MAX_REPLACEMENT_TIMEOUT = 20
MAX_NOOP = 15


class Status(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


_RANK = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}


@dataclass(frozen=True)
class Check:
    id: str
    status: Status
    detail: str
    remedy: str = ""
    packages: Mapping[str, str] = field(default_factory=dict)  # distro family -> package

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": str(self.status), "detail": self.detail,
                "remedy": self.remedy, "packages": dict(self.packages)}


def overall(checks: Iterable[Check]) -> Status:
    return max((c.status for c in checks), key=_RANK.__getitem__, default=Status.PASS)


def report(checks: Sequence[Check]) -> dict[str, Any]:
    return {"status": str(overall(checks)), "checks": [c.to_dict() for c in checks]}


def _packages(debian: str, rhel: str) -> dict[str, str]:
    return {"debian": debian, "rhel": rhel}


def install_hint(packages: Mapping[str, str]) -> str:
    if not packages:
        return ""
    return (f"Debian/Ubuntu: apt-get install {packages['debian']}; "
            f"RHEL: dnf install {packages['rhel']}")


OPEN_ISCSI = _packages("open-iscsi", "iscsi-initiator-utils")
MULTIPATH_TOOLS = _packages("multipath-tools", "device-mapper-multipath")
BINARIES: dict[str, tuple[dict[str, str], Status, str]] = {
    "iscsiadm": (OPEN_ISCSI, Status.FAIL, "logs in to iSCSI targets"),
    "multipath": (MULTIPATH_TOOLS, Status.FAIL, "shows the effective multipath settings"),
    "multipathd": (MULTIPATH_TOOLS, Status.FAIL, "builds and watches the maps"),
    "udevadm": (_packages("udev", "systemd-udev"), Status.FAIL, "settles device events"),
    "blockdev": (_packages("util-linux", "util-linux"), Status.FAIL, "reads device sizes"),
    "sg_inq": (_packages("sg3-utils", "sg3_utils"), Status.WARN,
               "reads SCSI inquiry data; the os-brick engine needs it"),
}
MODULES: dict[str, str] = {
    "iscsi_tcp": "iSCSI over TCP",
    "dm_multipath": "device-mapper multipath",
    "scsi_transport_fc": "the Fibre Channel transport",
}
MODULE_PACKAGES = _packages("linux-image-$(uname -r) (Ubuntu: linux-modules-extra-$(uname -r))",
                            "kernel-modules-$(uname -r)")


# ---- pure decisions ------------------------------------------------------------------

def binary_check(name: str, found: str | None) -> Check:
    packages, missing, role = BINARIES[name]
    if found:
        return Check(f"binary.{name}", Status.PASS, found)
    return Check(f"binary.{name}", missing, f"{name} is not installed ({role})",
                 f"install it. {install_hint(packages)}", packages)


def module_check(name: str, loaded: bool, loadable: bool | None) -> Check:
    cid = f"module.{name}"
    if loaded:
        return Check(cid, Status.PASS, "loaded")
    if loadable:
        return Check(cid, Status.PASS, "not loaded; loadable (the kernel loads it on first use)")
    how = "cannot be checked (no modprobe)" if loadable is None else "is not available"
    return Check(cid, Status.FAIL, f"the module for {MODULES[name]} {how} in this kernel",
                 f"install this kernel's modules, then `modprobe {name}`. "
                 f"{install_hint(MODULE_PACKAGES)}", MODULE_PACKAGES)


_IQN = re.compile(r"^iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*[a-z0-9](:\S+)?$")
_EUI = re.compile(r"^eui\.[0-9A-Fa-f]{16}$")
_NAA = re.compile(r"^naa\.([0-9A-Fa-f]{16}|[0-9A-Fa-f]{32})$")
# Names distributions ship before one is generated for the node: a cluster of
# nodes sharing one would see each other's sessions dropped by the array.
_TEMPLATES = ("iqn.1993-08.org.debian:01", "iqn.2004-10.com.ubuntu:01",
              "iqn.1994-05.com.redhat", "iqn.2005-03.org.open-iscsi")
_IQN_REMEDY = ("give the node a unique name: `echo InitiatorName=$(iscsi-iname) > "
               f"{INITIATOR_FILE}`, then restart iscsid")


def initiator_check(text: str | None) -> Check:
    cid = "iscsi.initiator_name"
    if text is None:
        return Check(cid, Status.FAIL, f"{INITIATOR_FILE} is missing",
                     f"install open-iscsi and {_IQN_REMEDY}. {install_hint(OPEN_ISCSI)}",
                     OPEN_ISCSI)
    names = [line.split("=", 1)[1].strip() for line in text.splitlines()
             if line.strip().startswith("InitiatorName=")]
    if not names:
        return Check(cid, Status.FAIL, f"{INITIATOR_FILE} has no InitiatorName", _IQN_REMEDY)
    name = names[-1]
    if not (_IQN.match(name.lower()) or _EUI.match(name) or _NAA.match(name)):
        return Check(cid, Status.FAIL, f"{name!r} is not a valid iSCSI name (RFC 3720)",
                     _IQN_REMEDY)
    if name.rstrip(":") in _TEMPLATES or name.endswith(":"):
        return Check(cid, Status.FAIL, f"{name} is a distribution's template, not a name "
                     "of this node", _IQN_REMEDY)
    return Check(cid, Status.PASS, name)


def _conf_values(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.lstrip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


REPLACEMENT = "node.session.timeo.replacement_timeout"
NOOP_KEYS = ("node.conn[0].timeo.noop_out_interval", "node.conn[0].timeo.noop_out_timeout")


def iscsid_conf_check(text: str | None,
                      mapped: Sequence[tuple[str, MappedTimeouts]] | None = None) -> Check:
    """iscsid.conf's timeouts, and the recovery_tmo a mapped session really gets.

    `mapped`: per vendor stanza, what multipathd writes into the sessions of its maps
    (mpathconf.mapped_timeouts); None when multipath's settings could not be read,
    and replacement_timeout is then judged as if every session used it.
    """
    cid = "iscsi.timeouts"
    if text is None:
        return Check(cid, Status.WARN, f"{ISCSID_CONF} is missing: open-iscsi's built-in "
                     "timeouts hold I/O on a dead path for 120 s",
                     f"install open-iscsi. {install_hint(OPEN_ISCSI)}", OPEN_ISCSI)
    values = _conf_values(text)
    numbers: dict[str, int] = {}
    problems: list[str] = []
    for key, default in ((REPLACEMENT, 120), *((k, 5) for k in NOOP_KEYS)):
        raw = values.get(key, str(default))
        try:
            numbers[key] = int(raw)
        except ValueError:
            problems.append(f"{key} = {raw!r} is not a number")
    for key in NOOP_KEYS:
        if key in numbers and not 0 < numbers[key] <= MAX_NOOP:
            problems.append(f"{key} = {numbers[key]} (wanted 1..{MAX_NOOP} with multipath)")
    # replacement_timeout decides for the sessions no map uses, and for the mapped
    # sessions of a vendor whose fast_io_fail_tmo multipathd does not write.
    keeping = None if not mapped else [n for n, t in mapped if t.recovery_tmo is None]
    replacement = numbers.get(REPLACEMENT)
    if replacement is not None and keeping != [] \
            and not 0 < replacement <= MAX_REPLACEMENT_TIMEOUT:
        problems.append(f"{REPLACEMENT} = {replacement} (wanted 1..{MAX_REPLACEMENT_TIMEOUT} "
                        "with multipath" + (f"; {', '.join(keeping)} mapped sessions keep it"
                                            if keeping else "") + ")")
    from_iscsid = len(problems)
    for name, t in mapped or ():
        if t.recovery_tmo is not None and not 0 < t.recovery_tmo <= MAX_REPLACEMENT_TIMEOUT:
            problems.append(f"{name} mapped sessions get recovery_tmo={t.recovery_tmo} "
                            f"({t.reason}; wanted 1..{MAX_REPLACEMENT_TIMEOUT})")
    detail = _timeouts_detail(numbers, mapped, keeping)
    if not problems:
        return Check(cid, Status.PASS, detail)
    remedies = []
    if from_iscsid:
        remedies.append(f"set them in {ISCSID_CONF} (e.g. replacement_timeout = 10, noop "
                        "interval and timeout = 5); they apply to node records created after "
                        "the change")
    if len(problems) > from_iscsid:
        remedies.append("give each vendor's maps a fast_io_fail_tmo of a few seconds: "
                        "`hostagent-cli multipath install`, and remove any value in "
                        f"{MULTIPATH_CONF}'s overrides that replaces the stanza's")
    return Check(cid, Status.WARN, "; ".join(problems) + f" (in effect: {detail})",
                 "; ".join(remedies))


def _timeouts_detail(numbers: Mapping[str, int],
                     mapped: Sequence[tuple[str, MappedTimeouts]] | None,
                     keeping: Sequence[str] | None) -> str:
    found = [f"{key.rsplit('.', 1)[1]}={numbers[key]}" for key in NOOP_KEYS if key in numbers]
    if REPLACEMENT in numbers:
        who = "" if keeping is None else " (sessions no map uses" + (
            f", and {', '.join(keeping)} maps'" if keeping else "") + ")"
        found.insert(0, f"replacement_timeout={numbers[REPLACEMENT]}{who}")
    detail = ", ".join(found)
    if mapped is not None:
        sessions = [f"{name} recovery_tmo={t.recovery_tmo} ({t.reason})"
                    if t.recovery_tmo is not None
                    else f"{name} recovery_tmo=replacement_timeout ({t.reason})"
                    for name, t in mapped]
        detail += "; mapped sessions (multipathd writes fast_io_fail_tmo into their " \
            "recovery_tmo): " + (", ".join(sessions) or "no vendor stanza")
    return detail


def host_default_check(config: Block, stanza: Stanza, want: HostDefault,
                       config_dir: str = MULTIPATH_CONF_DIR) -> Check:
    """A vendor's defaults-only setting: `multipath install` leaves it to the operator."""
    cid = f"multipath.{stanza.vendor.lower()}.{want.key}"
    got = config.section("defaults").get(want.key)
    if got == want.value:
        return Check(cid, Status.PASS, f"{want.key} {got} (defaults), as {want.source} asks "
                     f"for {stanza.name}")
    found = f"{want.key} is {got}" if got is not None else f"{want.key} is unset: {want.unset}"
    setting = f"{want.key} {want.value}"
    return Check(cid, Status.WARN, f"{found}; {want.source} sets {setting} for {stanza.name}",
                 f"add `{setting}` to the defaults section of {MULTIPATH_CONF}, or put "
                 f"`defaults {{ {setting} }}` in a file of its own in {config_dir} (e.g. "
                 f"{config_dir}/{want.key}.conf), then run `multipathd reconfigure`. It is a "
                 "default: it applies to every array's paths on this node, which is why "
                 "`hostagent-cli multipath install` does not write it")


INSTALL = "run `hostagent-cli multipath install`"


def multipath_checks(conf_text: str | None, config: Block, stanzas: Sequence[Stanza],
                     config_dir: str = MULTIPATH_CONF_DIR) -> list[Check]:
    checks = [Check("multipath.conf", Status.PASS, MULTIPATH_CONF) if conf_text is not None
              else Check("multipath.conf", Status.WARN, f"{MULTIPATH_CONF} is missing: "
                         "multipath runs on its built-in defaults", INSTALL)]
    for stanza in stanzas:
        v, p = stanza.vendor, stanza.product
        names = effective(config, v, p, "user_friendly_names")
        cid = f"multipath.{v.lower()}"
        if (hidden := blacklisted_by(config, v, p)) is not None:
            checks.append(Check(cid, Status.FAIL, f"the blacklist entry {hidden} hides every "
                                f"{stanza.name} device from multipath",
                                f"remove it, or add a blacklist_exceptions entry for vendor "
                                f'"{v}" product "{p}", to {MULTIPATH_CONF}'))
        elif diffs := stanza_differences(config, stanza):
            checks.append(Check(cid, Status.FAIL, f"{stanza.name}: " + "; ".join(diffs),
                                f"{INSTALL}; where a value comes from overrides, remove it "
                                f"there"))
        elif names.value == "yes":
            checks.append(Check(cid, Status.WARN, f"{stanza.name} maps get user-friendly "
                                f"names (from {names.source}), which differ from host to host",
                                f"set user_friendly_names no in {MULTIPATH_CONF}"))
        else:
            checks.append(Check(cid, Status.PASS, f"{stanza.name}: {stanza.file} in effect"))
        checks += [host_default_check(config, stanza, want, config_dir)
                   for want in stanza.host_defaults]
    return checks


def portal_checks(portal: Portal, route: Route | BaseException,
                  connect: BaseException | None) -> list[Check]:
    cid = f"portal.{portal}"
    if isinstance(route, BaseException):
        checks = [Check(f"{cid}.route", Status.FAIL, f"no route to {portal.host}: {route}",
                        "add a route or an address on the storage network")]
    elif not route.up:
        checks = [Check(f"{cid}.route", Status.FAIL, f"leaves by {route.ifname}, which is "
                        "down", f"bring it up: `ip link set {route.ifname} up`")]
    else:
        checks = [Check(f"{cid}.route", Status.PASS, f"via {route.ifname} (source "
                        f"{route.source or '-'}, MTU {route.mtu})")]
    if connect is None:
        checks.append(Check(f"{cid}.connect", Status.PASS, "TCP connection accepted"))
    else:
        reason = "timed out" if isinstance(connect, TimeoutError) else str(connect)
        checks.append(Check(f"{cid}.connect", Status.FAIL, f"cannot connect: {reason}",
                            "check the portal address, the firewall (TCP port "
                            f"{portal.port}) and the array's network"))
    return checks


def mtu_check(routes: Sequence[Route]) -> Check | None:
    by_mtu: dict[int, list[str]] = {}
    for r in routes:
        by_mtu.setdefault(r.mtu, []).append(f"{r.address} via {r.ifname}")
    if len(by_mtu) < 2:
        return None
    detail = "; ".join(f"MTU {m}: {', '.join(w)}" for m, w in sorted(by_mtu.items()))
    return Check("portals.mtu", Status.WARN, f"portals leave by interfaces of different MTU "
                 f"({detail}); a path may stall on large frames",
                 "give every storage interface the same MTU, end to end")


def connector_ip_check(my_ip: str | None, chosen: str | None) -> Check:
    """The `ip` of the connector the controller sees: Datera picks the access network's
    IP pool by it, so a loopback or missing address misroutes or refuses the attach."""
    cid = "connector.ip"
    remedy = ("set [DEFAULT] my_ip in hostagent.conf to this host's address on the network "
              "the array and its controller reach it by")
    if my_ip is not None:
        if is_loopback(my_ip):
            return Check(cid, Status.WARN, f"[DEFAULT] my_ip is {my_ip}, a loopback address: "
                         "the controller gets it as the connector's ip", remedy)
        return Check(cid, Status.PASS, f"{my_ip} ([DEFAULT] my_ip)")
    if chosen is None:
        return Check(cid, Status.WARN, "this host has no address but loopback and link-local "
                     "ones: the connector's ip is null", remedy)
    return Check(cid, Status.PASS, f"{chosen} (the default route's source, else the first "
                 "global address; [DEFAULT] my_ip sets another)")


def fc_check(hbas: Sequence[fc.FcHba]) -> Check:
    online = [h for h in hbas if h.online]
    if online:
        return Check("fc.hbas", Status.PASS, ", ".join(
            f"host{h.host} wwpn {h.port_name}" for h in online))
    if hbas:
        states = ", ".join(f"host{h.host} {h.port_state}" for h in hbas)
        return Check("fc.hbas", Status.FAIL, f"no Online FC port ({states})",
                     "check the cabling, the switch port and zoning")
    return Check("fc.hbas", Status.FAIL, "no Fibre Channel HBA (no fc_host)",
                 "install the HBA's driver (qla2xxx, lpfc) and its firmware")


# ---- gathering -----------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    portals: tuple[Portal, ...] = ()
    fc: bool = False
    connect_timeout: float = CONNECT_TIMEOUT


def udev_check(rules: Rules) -> Check:
    """udev's forward of a target's LUN-change event to every other disk of it
    (udevrule's docstring says why it costs each attach O(LUNs on the target))."""
    cid, found = "udev.lun_change", state(rules)
    cost = ("so each LUN attached or detached re-runs the disk rules and multipathd's "
            "change handling on every other LUN of its target: attaches slow as LUNs grow")
    if found == RuleState.IN_EFFECT:
        return Check(cid, Status.PASS, f"{OVERRIDE} (hostagent's) keeps REPORTED LUNS DATA "
                     "HAS CHANGED off the disks")
    if found == RuleState.NOT_NEEDED:
        return Check(cid, Status.PASS, "no rule in effect forwards REPORTED LUNS DATA HAS "
                     "CHANGED to the disks")
    if found == RuleState.MISSING:
        return Check(cid, Status.WARN, f"{rules.source} forwards each SCSI device's REPORTED "
                     f"LUNS DATA HAS CHANGED event to its disk, {cost}", INSTALL)
    if found == RuleState.STALE:
        return Check(cid, Status.WARN, f"{OVERRIDE} is hostagent's copy of an earlier "
                     f"{rules.source or 'distribution file, now gone'}", INSTALL)
    return Check(cid, Status.WARN, f"{OVERRIDE}, not hostagent's, forwards each SCSI "
                 f"device's REPORTED LUNS DATA HAS CHANGED event to its disk, {cost}",
                 f"add `{SKIP.rstrip(', ')}` before `{FORWARD}` in its forward rule, then "
                 "`udevadm control --reload`")


class Preflight:
    def __init__(self, fs: HostFS, executor: Executor, multipathd: MultipathdClient,
                 net: Net, mpconf: MultipathConfig, udev: UdevRule,
                 observe: Callable[[Mapping[str, int]], None] | None = None, *,
                 my_ip: str | None = None, local: LocalNet = HOST_LOCAL_NET) -> None:
        self.fs, self.executor, self.multipathd, self.net = fs, executor, multipathd, net
        self.mpconf, self.udev = mpconf, udev
        self.my_ip, self.local = my_ip, local  # the connector's ip: configured, or chosen
        self._observe = observe  # checks per status after each run: metrics

    async def run(self, options: Options = Options()) -> list[Check]:
        # One `multipath -t` serves both the multipath checks and iscsi.timeouts (what
        # mapped sessions get), read while the other checks run.
        binaries, services, modules, config, portals, fc_hbas = await asyncio.gather(
            self._binaries(), self._services(), self._modules(options.fc),
            self._config(), self._portals(options), self._fc(options.fc))
        checks = [*binaries, *services, *modules, *self._iscsi_files(config),
                  *self._multipath(config), self._connector_ip(), *portals, *fc_hbas]
        if self._observe is not None:
            self._observe({str(s): sum(c.status == s for c in checks) for s in Status})
        return checks

    def _connector_ip(self) -> Check:
        return connector_ip_check(self.my_ip, None if self.my_ip else host_ip(self.local))

    async def multipath(self) -> list[Check]:
        return self._multipath(await self._config())

    async def _config(self) -> Block | Check:
        try:
            return await self.mpconf.effective_config()
        except HostAgentError as err:
            return Check("multipath.config", Status.FAIL,
                         f"cannot read multipath's effective settings: {err.message}",
                         f"install multipath-tools. {install_hint(MULTIPATH_TOOLS)}",
                         MULTIPATH_TOOLS)

    def _multipath(self, config: Block | Check) -> list[Check]:
        udev = udev_check(self.udev.rules())
        if isinstance(config, Check):
            return [config, udev]
        return [*multipath_checks(self.mpconf.conf_text(), config, self.mpconf.stanzas,
                                  self.mpconf.config_dir()), udev]

    def which(self, name: str) -> str | None:
        return next((f"{d}/{name}" for d in BIN_DIRS if self.fs.is_executable(f"{d}/{name}")),
                    None)

    async def _binaries(self) -> list[Check]:
        return [binary_check(name, self.which(name)) for name in BINARIES]

    async def _services(self) -> list[Check]:
        return [await self._iscsid(), await self._multipathd()]

    async def _iscsid(self) -> Check:
        try:
            await self.executor.run(["iscsiadm", "-m", "session"], timeout=COMMAND_TIMEOUT,
                                    ok_codes=(IscsiErr.SUCCESS, IscsiErr.NO_OBJS_FOUND))
        except HostAgentError as err:
            return Check("service.iscsid", Status.FAIL, f"iscsid does not answer: {err.message}",
                         "start it: `systemctl enable --now iscsid` "
                         f"(Debian/Ubuntu also iscsid.socket). {install_hint(OPEN_ISCSI)}",
                         OPEN_ISCSI)
        return Check("service.iscsid", Status.PASS, "answers")

    async def _multipathd(self) -> Check:
        try:
            await self.multipathd.command("show status", timeout=COMMAND_TIMEOUT)
        except HostAgentError as err:
            return Check("service.multipathd", Status.FAIL,
                         f"multipathd does not answer: {err.message}",
                         "start it: `systemctl enable --now multipathd`. "
                         f"{install_hint(MULTIPATH_TOOLS)}", MULTIPATH_TOOLS)
        return Check("service.multipathd", Status.PASS, "answers")

    async def _modules(self, with_fc: bool) -> list[Check]:
        checks = []
        for name in (m for m in MODULES if with_fc or m != "scsi_transport_fc"):
            loaded = self.fs.exists(f"{SYS_MODULE}/{name}")
            checks.append(module_check(name, loaded, loaded or await self._loadable(name)))
        return checks

    async def _loadable(self, module: str) -> bool | None:
        try:
            result = await self.executor.run(["modprobe", "--dry-run", "--quiet", module],
                                              timeout=COMMAND_TIMEOUT, ok_codes=(0, 1))
        except CommandNotFound:
            return None
        return result.returncode == 0

    def _iscsi_files(self, config: Block | Check) -> list[Check]:
        mapped = None if isinstance(config, Check) else [
            (s.name, mapped_timeouts(config, s.vendor, s.product)) for s in self.mpconf.stanzas]
        return [initiator_check(self.fs.try_read(INITIATOR_FILE)),
                iscsid_conf_check(self.fs.try_read(ISCSID_CONF), mapped)]

    async def _portals(self, options: Options) -> list[Check]:
        async def one(portal: Portal) -> tuple[Route | BaseException, BaseException | None]:
            route: Route | BaseException
            try:
                route = await self.net.route(portal.host)
            except OSError as err:
                route = err
            try:
                await self.net.connect(portal.host, portal.port, options.connect_timeout)
            except (OSError, TimeoutError) as err:
                return route, err
            return route, None

        results = await asyncio.gather(*(one(p) for p in options.portals))
        checks = [c for p, (route, conn) in zip(options.portals, results, strict=True)
                  for c in portal_checks(p, route, conn)]
        mtu = mtu_check([r for r, _ in results if isinstance(r, Route)])
        return checks + ([mtu] if mtu else [])

    async def _fc(self, with_fc: bool) -> list[Check]:
        return [fc_check(fc.hbas(self.fs))] if with_fc else []
