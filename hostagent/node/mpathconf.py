"""Vendor multipath settings: install them, prove they took effect, find conflicts.

The truth is what multipath-tools itself resolves (`multipath -t`), not what a
file says: a device stanza can be shadowed by `overrides`, by a later stanza
for the same vendor, or hidden by a blacklist. multipath-tools resolves an
attribute as overrides, then the device entries that match the device (later
entries win), then defaults; `effective()` does the same on its output.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hostagent.errors import DaemonUnavailable, HostCommandError, InvalidConfig
from hostagent.host.executor import Executor
from hostagent.host.fs import MULTIPATH_CONF, MULTIPATH_CONF_DIR, HostFS
from hostagent.host.multipath import MultipathdClient

COMMAND_TIMEOUT = 30.0
RECONFIGURE_TIMEOUT = 60.0
MINIMAL_CONF = """\
# Created by `hostagent-cli multipath install`: multipath-tools' built-in
# defaults, with maps named by WWID (what Cinder, os-brick and hostagent expect).
# Vendor settings live in {config_dir}.
defaults {{
\tuser_friendly_names no
}}
"""


# ---- the configuration language (pure) ---------------------------------------------

@dataclass
class Block:
    """A section of multipath.conf: its attributes in order and its sub-sections."""

    name: str
    attrs: list[tuple[str, str]] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)

    def get(self, key: str) -> str | None:
        values = [v for k, v in self.attrs if k == key]
        return values[-1] if values else None

    def children(self, name: str) -> Iterator[Block]:
        return (b for b in self.blocks if b.name == name)

    def section(self, name: str) -> Block:
        """The section merged over all its occurrences (conf.d files repeat them)."""
        merged = Block(name)
        for b in self.children(name):
            merged.attrs += b.attrs
            merged.blocks += b.blocks
        return merged


_TOKEN = re.compile(r'"((?:[^"]|"")*)"|([^\s"#!]+)|[#!].*')


def _tokens(line: str) -> list[str]:
    out = []
    for m in _TOKEN.finditer(line):
        if m.group(1) is not None:
            out.append(m.group(1).replace('""', '"'))
        elif m.group(2) is not None:
            out.append(m.group(2))
        else:
            break  # a comment runs to the end of the line
    return out


def parse(text: str) -> Block:
    """multipath.conf syntax: `name {`, `}` and `keyword value` lines."""
    root = Block("")
    stack = [root]
    for n, line in enumerate(text.splitlines(), 1):
        words = _tokens(line)
        if not words:
            continue
        if words[-1] == "{" and len(words) == 2:
            child = Block(words[0])
            stack[-1].blocks.append(child)
            stack.append(child)
        elif words == ["}"]:
            if len(stack) == 1:
                raise InvalidConfig(f"multipath config line {n}", "'}' without a section")
            stack.pop()
        else:
            stack[-1].attrs.append((words[0], " ".join(words[1:])))
    if len(stack) != 1:
        raise InvalidConfig("multipath config", f"section {stack[-1].name!r} is not closed")
    return root


# ---- hostagent's vendor stanzas -----------------------------------------------------

@dataclass(frozen=True)
class HostDefault:
    """A setting a vendor publishes that multipath-tools reads from `defaults` only."""

    key: str
    value: str
    source: str  # where the vendor publishes it
    unset: str  # what multipath-tools does without it


# A device stanza cannot carry these, and in `defaults` they apply to every array's
# paths on the node: preflight checks them and its remedy says how to set them, but
# `multipath install` does not write them (docs/architecture.md, "Vendor settings").
HOST_DEFAULTS: dict[tuple[str, str], tuple[HostDefault, ...]] = {
    # Datera/datera-csi assets/multipath.conf: `defaults { checker_timeout 5 }`.
    # Unset, select_checker() (libmultipath/propsel.c) takes the path's sysfs timeout.
    ("DATERA", "IBLOCK"): (HostDefault(
        "checker_timeout", "5", "Datera's multipath.conf (datera-csi)",
        "a path checker waits for the path's SCSI command timeout "
        "(/sys/block/sdX/device/timeout, 30 s by default)"),),
}


@dataclass(frozen=True)
class Stanza:
    file: str
    vendor: str
    product: str
    attrs: tuple[tuple[str, str], ...]
    text: str

    @property
    def name(self) -> str:
        return f"{self.vendor}/{self.product}"

    @property
    def host_defaults(self) -> tuple[HostDefault, ...]:
        return HOST_DEFAULTS.get((self.vendor, self.product), ())


def stanza_dir() -> Path:
    """etc/multipath.conf.d of a source tree, else where setup.py installs it."""
    for candidate in (Path(__file__).resolve().parents[2] / "etc" / "multipath.conf.d",
                      Path(sys.prefix) / "share" / "hostagent" / "multipath.conf.d"):
        if candidate.is_dir():
            return candidate
    raise InvalidConfig("share/hostagent/multipath.conf.d",
                        "hostagent's multipath stanzas are not installed")


def load_stanzas(directory: Path | None = None) -> list[Stanza]:
    stanzas = []
    for path in sorted((directory or stanza_dir()).glob("*.conf")):
        text = path.read_text()
        for dev in parse(text).section("devices").children("device"):
            attrs = tuple((k, v) for k, v in dev.attrs if k not in ("vendor", "product"))
            stanzas.append(Stanza(path.name, dev.get("vendor") or "", dev.get("product") or "",
                                  attrs, text))
    return stanzas


# ---- resolution and conflicts (pure) ------------------------------------------------

def _matches(pattern: str | None, value: str) -> bool:
    """multipath-tools matches with unanchored POSIX EREs; absent means any."""
    if pattern is None:
        return True
    try:
        return re.search(pattern, value) is not None
    except re.error:
        return False


def _device_entries(section: Block, vendor: str, product: str) -> list[Block]:
    return [d for d in section.children("device")
            if _matches(d.get("vendor"), vendor) and _matches(d.get("product"), product)]


@dataclass(frozen=True)
class Setting:
    value: str | None
    source: str  # "overrides", "devices", "defaults" or "built-in"


def effective(config: Block, vendor: str, product: str, key: str) -> Setting:
    value = config.section("overrides").get(key)
    if value is not None:
        return Setting(value, "overrides")
    for entry in reversed(_device_entries(config.section("devices"), vendor, product)):
        if (value := entry.get(key)) is not None:
            return Setting(value, "devices")
    value = config.section("defaults").get(key)
    return Setting(value, "defaults" if value is not None else "built-in")


def blacklisted_by(config: Block, vendor: str, product: str) -> str | None:
    """The blacklist entry that hides every device of this vendor, if any."""
    exceptions = config.section("blacklist_exceptions")
    if _device_entries(exceptions, vendor, product):
        return None
    entries = _device_entries(config.section("blacklist"), vendor, product)
    if entries:
        return f'device {{ vendor "{entries[0].get("vendor")}" product ' \
               f'"{entries[0].get("product") or ".*"}" }}'
    for key in ("wwid", "devnode"):
        for pattern in (v for k, v in config.section("blacklist").attrs if k == key):
            if _hides_everything(pattern, key, exceptions):
                return f'{key} "{pattern}"'
    return None


def _hides_everything(pattern: str, key: str, exceptions: Block) -> bool:
    # A SCSI disk's devnode is sdX and its WWID is arbitrary: only patterns that
    # match every such name hide a whole vendor.
    samples = ("sda", "sdzz") if key == "devnode" else ("3600140500000000", "2000000")
    if pattern.startswith("!"):
        return not any(_matches(pattern[1:], s) for s in samples)
    hidden = all(_matches(pattern, s) for s in samples)
    excepted = any(_matches(p, s) for k, p in exceptions.attrs if k == key for s in samples)
    return hidden and not excepted


def stanza_differences(config: Block, stanza: Stanza) -> list[str]:
    """Attributes multipath resolves to another value than the stanza's."""
    diffs = []
    for key, wanted in stanza.attrs:
        got = effective(config, stanza.vendor, stanza.product, key)
        if got.value != wanted:
            shown = "unset" if got.value is None else f'"{got.value}" (from {got.source})'
            diffs.append(f'{key}: wants "{wanted}", multipath uses {shown}')
    return diffs


# ---- what multipathd writes into the transport (pure) ------------------------------
#
# Each time multipathd sets up a map (created, reloaded, `multipathd reconfigure`),
# setup_map() (opensvc/multipath-tools libmultipath/configure.c) calls
# sysfs_set_scsi_tmo() (libmultipath/discovery.c), which for each path of the map:
# - raises a dev_loss_tmo that is set to at least no_path_retry * polling_interval when
#   no_path_retry is a number, and to "infinity" when it is "queue" (never an unset one);
# - turns fast_io_fail_tmo off when it is not smaller than that dev_loss_tmo;
# - FC (sysfs_set_rport_tmo): writes fast_io_fail_tmo and dev_loss_tmo into the path's
#   /sys/class/fc_remote_ports/rport-*; without a positive fast_io_fail_tmo a
#   dev_loss_tmo above 600 is cut to 600 (unless no_path_retry is "queue");
# - iSCSI (sysfs_set_session_tmo): writes a positive fast_io_fail_tmo into the session's
#   /sys/class/iscsi_session/session*/recovery_tmo, which otherwise keeps the node
#   record's replacement_timeout (multipathd cannot write "off" or 0 there, and ignores
#   dev_loss_tmo on iSCSI).
# So on a mapped iSCSI session fast_io_fail_tmo, not iscsid.conf's replacement_timeout,
# decides how long a dead path holds I/O. Seen in the guest: a K2 map's sessions read
# recovery_tmo 2 with replacement_timeout 5, and 2 again after `multipathd reconfigure`
# when 7 had been written by hand (tests/kernel/test_preflight.py measures it).

MAX_DEV_LOSS_TMO = 2**32 - 1  # multipath-tools' "infinity" (UINT_MAX)
FC_DEV_LOSS_LIMIT = 600  # without fast_io_fail_tmo (DEFAULT_DEV_LOSS_TMO)
DEFAULT_POLLING_INTERVAL = 5


@dataclass(frozen=True)
class MappedTimeouts:
    """What multipathd writes for the paths of one vendor's maps."""

    recovery_tmo: int | None  # into each iSCSI session; None: replacement_timeout stays
    dev_loss_tmo: int | None  # into each FC remote port; None: the port's own stays
    reason: str  # how recovery_tmo was decided, for reports


def _seconds(value: str | None) -> int | None:
    if value is None:
        return None
    if value == "infinity":
        return MAX_DEV_LOSS_TMO
    try:
        return int(value)
    except ValueError:
        return None


def mapped_timeouts(config: Block, vendor: str, product: str) -> MappedTimeouts:
    """The timeouts multipathd gives the paths of a vendor's maps (see above)."""
    fast = effective(config, vendor, product, "fast_io_fail_tmo")
    dev_loss = _seconds(effective(config, vendor, product, "dev_loss_tmo").value)
    retry = effective(config, vendor, product, "no_path_retry").value
    checkint = _seconds(config.section("defaults").get("polling_interval")) \
        or DEFAULT_POLLING_INTERVAL
    minimum = MAX_DEV_LOSS_TMO if retry == "queue" else \
        min((_seconds(retry) or 0) * checkint, MAX_DEV_LOSS_TMO)
    if dev_loss is not None:
        dev_loss = max(dev_loss, minimum)
    fast_s = _seconds(fast.value) if fast.value != "infinity" else None
    if fast.value is None:
        recovery, reason = None, "fast_io_fail_tmo is unset"
    elif fast_s is None or fast_s <= 0:
        recovery, reason = None, f"fast_io_fail_tmo {fast.value} (from {fast.source}) " \
            "cannot be written to a session"
    elif dev_loss is not None and fast_s >= dev_loss:
        recovery, reason = None, f"fast_io_fail_tmo {fast_s} (from {fast.source}) is not " \
            f"smaller than dev_loss_tmo {dev_loss}: multipathd turns it off"
    else:
        recovery, reason = fast_s, f"fast_io_fail_tmo from {fast.source}"
    if dev_loss is not None and recovery is None and dev_loss > FC_DEV_LOSS_LIMIT \
            and retry != "queue":
        dev_loss = FC_DEV_LOSS_LIMIT
    return MappedTimeouts(recovery, dev_loss, reason)


# ---- the host ---------------------------------------------------------------------

@dataclass(frozen=True)
class InstallResult:
    written: tuple[str, ...]
    unchanged: tuple[str, ...]
    created_conf: bool
    reconfigured: bool


class MultipathConfig:
    def __init__(self, fs: HostFS, executor: Executor, multipathd: MultipathdClient,
                 stanzas: list[Stanza] | None = None) -> None:
        self.fs, self.executor, self.multipathd = fs, executor, multipathd
        self.stanzas = stanzas if stanzas is not None else load_stanzas()

    def conf_text(self) -> str | None:
        return self.fs.try_read(MULTIPATH_CONF)

    def config_dir(self) -> str:
        text = self.conf_text()
        configured = parse(text).section("defaults").get("config_dir") if text else None
        return configured or MULTIPATH_CONF_DIR

    async def effective_config(self) -> Block:
        result = await self.executor.run(["multipath", "-t"], timeout=COMMAND_TIMEOUT)
        return parse(result.stdout)

    async def install(self) -> InstallResult:
        directory = self.config_dir()
        written, unchanged = [], []
        for file, text in sorted({s.file: s.text for s in self.stanzas}.items()):
            target = f"{directory}/{file}"
            if self.fs.try_read(target) == text.strip():
                unchanged.append(target)
            else:
                self.fs.replace_file(target, text)
                written.append(target)
        created = self.conf_text() is None
        if created:
            self.fs.replace_file(MULTIPATH_CONF, MINIMAL_CONF.format(config_dir=directory))
        config = await self.effective_config()
        for stanza in self.stanzas:
            if diffs := stanza_differences(config, stanza):
                raise InvalidConfig(f"multipath {stanza.name}", "the settings did not take "
                                    "effect: " + "; ".join(diffs))
        return InstallResult(tuple(written), tuple(unchanged), created,
                             await self._reconfigure())

    async def _reconfigure(self) -> bool:
        """Make a running multipathd read the new settings; False when none runs."""
        try:
            reply = await self.multipathd.command("reconfigure", timeout=RECONFIGURE_TIMEOUT)
        except DaemonUnavailable:
            return False
        if reply.strip() != "ok":
            raise HostCommandError(f"multipathd reconfigure answered {reply.strip()!r}")
        return True
