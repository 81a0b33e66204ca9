"""The udev rule that keeps a LUN change off a target's other disks: the copy made of
the guest's 60-block.rules, what each host state is, install on a node tree, the
preflight check, and `hostagent-cli multipath install`'s report of it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hostagent.cli import main as cli
from hostagent.node.preflight import Status, udev_check
from hostagent.node.tools import Host
from hostagent.node.udevrule import (
    FORWARD,
    OVERRIDE,
    SKIP,
    Rules,
    RuleState,
    forwards_lun_change,
    masked,
    state,
)
from tests.unit.preflighthost import FIXTURES, MULTIPATH_T_STANZAS, Node

STOCK = (FIXTURES / "60-block.rules").read_text()
SOURCE = "/usr/lib/udev/rules.d/60-block.rules"
FOREIGN = "# the operator's own\n" + STOCK


def test_the_copy_differs_from_the_guests_file_only_in_the_forward_rule() -> None:
    copy = masked(STOCK, SOURCE)
    assert forwards_lun_change(STOCK) and not forwards_lun_change(copy)
    body = copy.splitlines()[copy.splitlines().index(STOCK.splitlines()[0]):]
    changed = [(a, b) for a, b in zip(STOCK.splitlines(), body, strict=True) if a != b]
    assert changed == [(
        'ACTION=="change", SUBSYSTEM=="scsi", ENV{DEVTYPE}=="scsi_device", TEST=="block", '
        + FORWARD,
        'ACTION=="change", SUBSYSTEM=="scsi", ENV{DEVTYPE}=="scsi_device", TEST=="block", '
        + SKIP + FORWARD)]
    assert SOURCE in copy.splitlines()[0]


def test_a_forward_continued_over_lines_is_found_and_a_comment_is_not_a_rule() -> None:
    split = ('# ACTION=="change", SUBSYSTEM=="scsi", ' + FORWARD + "\n"
             'ACTION=="change", SUBSYSTEM=="scsi", \\\n  TEST=="block", ' + FORWARD + "\n")
    assert forwards_lun_change(split)
    copy = masked(split, SOURCE)
    assert not forwards_lun_change(copy)
    assert copy.endswith('ACTION=="change", SUBSYSTEM=="scsi", \\\n  TEST=="block", '
                         + SKIP + FORWARD + "\n")
    assert ("# ACTION" + split.split("# ACTION")[1].splitlines()[0]) in copy  # untouched
    assert not forwards_lun_change(split.splitlines()[0])


@pytest.mark.parametrize(("rules", "expected"), [
    (Rules(SOURCE, STOCK, None), RuleState.MISSING),
    (Rules(SOURCE, STOCK, masked(STOCK, SOURCE)), RuleState.IN_EFFECT),
    (Rules(SOURCE, STOCK + "# an update\n", masked(STOCK, SOURCE)), RuleState.STALE),
    (Rules(None, None, masked(STOCK, SOURCE)), RuleState.STALE),
    (Rules(SOURCE, STOCK, FOREIGN), RuleState.FOREIGN),
    (Rules(SOURCE, STOCK, masked(STOCK, SOURCE).replace("# hostagent: ", "# mine: ")),
     RuleState.NOT_NEEDED),
    (Rules(SOURCE, STOCK.replace(FORWARD, SKIP + FORWARD), None), RuleState.NOT_NEEDED),
    (Rules(None, None, None), RuleState.NOT_NEEDED),
])
def test_each_host_state(rules: Rules, expected: RuleState) -> None:
    assert state(rules) == expected


@pytest.mark.parametrize(("rules", "status", "detail", "remedy"), [
    (Rules(SOURCE, STOCK, None), Status.WARN, "attaches slow as LUNs grow",
     "hostagent-cli multipath install"),
    (Rules(SOURCE, STOCK + "#\n", masked(STOCK, SOURCE)), Status.WARN, "an earlier",
     "hostagent-cli multipath install"),
    (Rules(SOURCE, STOCK, FOREIGN), Status.WARN, "not hostagent's",
     'add `ENV{SDEV_UA}!="REPORTED_LUNS_DATA_HAS_CHANGED"` before'),
    (Rules(SOURCE, STOCK, masked(STOCK, SOURCE)), Status.PASS, "hostagent's", ""),
    (Rules(None, None, None), Status.PASS, "no rule in effect", ""),
])
def test_the_preflight_check(rules: Rules, status: Status, detail: str, remedy: str) -> None:
    check = udev_check(rules)
    assert (check.id, check.status) == ("udev.lun_change", status)
    assert detail in check.detail and remedy in check.remedy and bool(remedy) == bool(
        check.remedy)


def reload(node: Node) -> None:
    node.executor.expect(["udevadm", "control", "--reload"])


def test_install_writes_the_copy_once_and_rewrites_it_when_the_stock_file_changes(
        tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write(SOURCE, STOCK)
    reload(node)
    done = asyncio.run(node.udev.install())
    assert (done.path, done.found, done.action) == (OVERRIDE, RuleState.MISSING, "written")
    assert node.fs.read(OVERRIDE) == masked(STOCK, SOURCE).strip()
    node.executor.assert_done()
    assert asyncio.run(node.udev.install()).action == "unchanged"  # no reload either
    node.write(SOURCE, STOCK + "# an update\n")
    reload(node)
    assert asyncio.run(node.udev.install()).found == RuleState.STALE
    assert node.fs.read(OVERRIDE) == masked(STOCK + "# an update\n", SOURCE).strip()
    node.executor.assert_done()


def test_install_leaves_an_operators_copy_and_removes_only_its_own(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write(SOURCE, STOCK)
    node.write(OVERRIDE, FOREIGN)
    assert asyncio.run(node.udev.install()).action == "left alone"
    assert node.fs.read(OVERRIDE) == FOREIGN.strip()
    node.write(OVERRIDE, masked(STOCK, SOURCE))
    (node.root / SOURCE.lstrip("/")).unlink()  # the distribution dropped the file
    reload(node)
    assert asyncio.run(node.udev.install()).action == "removed"
    assert not node.fs.exists(OVERRIDE)
    assert asyncio.run(node.udev.install()).action == "unchanged"
    node.executor.assert_done()


def test_cli_multipath_install_writes_the_rule_and_multipath_check_then_passes_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Node(tmp_path)
    node.write("/lib/udev/rules.d/60-block.rules", STOCK)  # a distribution without /usr/lib
    monkeypatch.setattr("hostagent.cli.local.real_host",
                        lambda: Host(node.preflight, node.mpconf, node.udev))
    node.executor.expect(["multipath", "-t"], stdout=MULTIPATH_T_STANZAS)
    reload(node)
    assert cli.main(["multipath", "install", "--json"]) == 0
    rule = json.loads(capsys.readouterr().out)["udev_rule"]
    assert rule == {"path": OVERRIDE, "found": "missing", "action": "written"}
    assert "/lib/udev/rules.d/60-block.rules" in node.fs.read(OVERRIDE).splitlines()[0]
    node.executor.expect(["multipath", "-t"], stdout=MULTIPATH_T_STANZAS)
    cli.main(["multipath", "check"])
    table = capsys.readouterr().out
    assert any(line.startswith("pass") and "udev.lun_change" in line
               for line in table.splitlines()), table
    node.executor.assert_done()
