"""The udev rule that keeps one LUN's arrival off every other disk of its target.

systemd's 60-block.rules forwards each change event of a SCSI device to its disk
("forward scsi device event to corresponding block device"; systemd 252 as Debian
12 ships it, unchanged upstream since 2013). When a target's LUN inventory changes,
the array raises REPORTED LUNS DATA HAS CHANGED on every other LUN it presents to
the initiator (LIO: target_luns_data_has_changed), and the kernel turns each into a
change event of that SCSI device carrying SDEV_UA=REPORTED_LUNS_DATA_HAS_CHANGED
(drivers/scsi/scsi_lib.c, scsi_evt_emit). Forwarded, every such event re-runs the
disk rules (sg_inq, `multipath -u`) and multipathd's change handling on every LUN
of a shared target for each LUN attached or detached: with N LUNs behind one K2
IQN an attach costs the host O(N) work (BENCHMARKS.md, case f, runs C and D).

The event says nothing about the disk itself, so the rule masks the distribution's
file with a copy of it in /etc whose forward skips that one event; capacity, inquiry
and media changes are forwarded as before. The copy says where it came from, so a
changed distribution file is noticed (stale) and written again on install.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from hostagent.host.executor import Executor
from hostagent.host.fs import ETC_UDEV_RULES, LIB_UDEV_RULES, HostFS

RULES_FILE = "60-block.rules"
STOCK_PATHS = tuple(f"{d}/{RULES_FILE}" for d in LIB_UDEV_RULES)
OVERRIDE = f"{ETC_UDEV_RULES}/{RULES_FILE}"
FORWARD = 'ATTR{block/*/uevent}="change"'
SKIP = 'ENV{SDEV_UA}!="REPORTED_LUNS_DATA_HAS_CHANGED", '
MARK = "# hostagent: "
HEADER = (MARK + "copy of {source}, its forward of SCSI change events to disks\n"
          "# skipping REPORTED LUNS DATA HAS CHANGED (one LUN added or removed on the\n"
          "# target says nothing about this disk). Written by `hostagent-cli multipath\n"
          "# install`, again when {source} changes; remove it to go back.\n")
COMMAND_TIMEOUT = 30.0


class RuleState(StrEnum):
    IN_EFFECT = "in effect"  # hostagent's copy of the current distribution file
    NOT_NEEDED = "not needed"  # nothing in effect forwards the event
    MISSING = "missing"  # the distribution's file forwards it, nothing masks it
    STALE = "stale"  # hostagent's copy, of an older distribution file
    FOREIGN = "foreign"  # someone else's copy, forwarding it


@dataclass(frozen=True)
class Rules:
    """What the host has: the distribution's file (where, what) and the /etc copy."""

    source: str | None
    stock: str | None
    override: str | None


def _logical_lines(text: str) -> list[list[str]]:
    """Physical lines grouped as udev reads them: a trailing backslash continues."""
    groups: list[list[str]] = []
    continued = False
    for line in text.splitlines():
        if continued:
            groups[-1].append(line)
        else:
            groups.append([line])
        continued = line.endswith("\\")
    return groups


def _forwards(group: list[str]) -> bool:
    rule = " ".join(group)
    return (not rule.lstrip().startswith("#") and 'SUBSYSTEM=="scsi"' in rule
            and FORWARD in rule and "SDEV_UA" not in rule)


def forwards_lun_change(text: str) -> bool:
    """Whether a rules file forwards a SCSI device's LUN-change event to its disk."""
    return any(_forwards(g) for g in _logical_lines(text))


def masked(stock: str, source: str) -> str:
    """The /etc copy of `stock`: the same rules, each forward skipping the event."""
    lines = []
    for group in _logical_lines(stock):
        if _forwards(group):
            group = [line.replace(FORWARD, SKIP + FORWARD, 1) for line in group]
        lines += group
    return HEADER.format(source=source) + "\n".join(lines) + "\n"


def state(rules: Rules) -> RuleState:
    if rules.override is not None and rules.override.startswith(MARK):
        if rules.stock is None or rules.source is None:
            return RuleState.STALE
        fresh = rules.override.strip() == masked(rules.stock, rules.source).strip()
        return RuleState.IN_EFFECT if fresh else RuleState.STALE
    if rules.override is not None:
        return RuleState.FOREIGN if forwards_lun_change(rules.override) else RuleState.NOT_NEEDED
    if rules.stock is not None and forwards_lun_change(rules.stock):
        return RuleState.MISSING
    return RuleState.NOT_NEEDED


@dataclass(frozen=True)
class RuleInstall:
    path: str
    found: RuleState
    action: str  # "written", "removed", "unchanged" or "left alone"


class UdevRule:
    def __init__(self, fs: HostFS, executor: Executor) -> None:
        self.fs, self.executor = fs, executor

    def rules(self) -> Rules:
        source = next((p for p in STOCK_PATHS if self.fs.exists(p)), None)
        return Rules(source, self.fs.try_read(source) if source else None,
                     self.fs.try_read(OVERRIDE))

    async def install(self) -> RuleInstall:
        """Write (or rewrite) hostagent's copy where it is missing or stale; an
        operator's own copy is left alone (preflight says what to add to it)."""
        rules = self.rules()
        found = state(rules)
        if found in (RuleState.IN_EFFECT, RuleState.NOT_NEEDED, RuleState.FOREIGN):
            action = "left alone" if found == RuleState.FOREIGN else "unchanged"
            return RuleInstall(OVERRIDE, found, action)
        if rules.stock is None or rules.source is None:  # our copy of a file now gone
            self.fs.unlink(OVERRIDE)
            action = "removed"
        else:
            self.fs.replace_file(OVERRIDE, masked(rules.stock, rules.source))
            action = "written"
        # udevd would notice the change on a later event; the next attach must not wait.
        await self.executor.run(["udevadm", "control", "--reload"], timeout=COMMAND_TIMEOUT)
        return RuleInstall(OVERRIDE, found, action)
