"""mpathconf: the config language, hostagent's stanzas, how multipath resolves them
(on `multipath -t` of multipath-tools 0.9.4), and install on a node tree."""

from __future__ import annotations

import asyncio
import re
import stat
from pathlib import Path

import pytest

from hostagent.errors import InvalidConfig
from hostagent.node.mpathconf import (
    MAX_DEV_LOSS_TMO,
    Block,
    MappedTimeouts,
    Stanza,
    blacklisted_by,
    effective,
    load_stanzas,
    mapped_timeouts,
    parse,
    stanza_differences,
    stanza_dir,
)
from tests.unit.preflighthost import MULTIPATH_T_BUILTIN, MULTIPATH_T_STANZAS, Node

STANZAS = load_stanzas()
DATERA, K2 = (next(s for s in STANZAS if s.vendor == v) for v in ("DATERA", "KMNRIO"))


def conf(text: str) -> Block:
    return parse(MULTIPATH_T_STANZAS + text)


# ---- the language --------------------------------------------------------------------

def test_parse_sections_quotes_and_comments() -> None:
    root = parse('defaults {\n  user_friendly_names no # why\n  prio_args ""\n'
                 '  alias "a ""b"" !c"  ! a comment\n}\nblacklist {\n devnode "^sd"\n'
                 ' device {\n  vendor ".*"\n }\n}\n')
    defaults = root.section("defaults")
    assert defaults.get("user_friendly_names") == "no"
    assert defaults.get("prio_args") == ""
    assert defaults.get("alias") == 'a "b" !c'
    assert [d.get("vendor") for d in root.section("blacklist").children("device")] == [".*"]


def test_repeated_sections_merge_and_the_last_value_wins() -> None:
    root = parse("defaults {\n a 1\n}\ndefaults {\n a 2\n}\n")
    assert root.section("defaults").get("a") == "2"


@pytest.mark.parametrize("text", ["defaults {\n a 1\n", "}\n"])
def test_parse_refuses_unbalanced_sections(text: str) -> None:
    with pytest.raises(InvalidConfig):
        parse(text)


# ---- the stanzas hostagent ships ------------------------------------------------------

# What the vendors publish, as values (Datera/datera-csi assets/multipath.conf;
# silk-us/scripts-and-configs Configs/multipath.conf, device KMNRIO/KDP), and where
# hostagent's stanzas depart from it on purpose: each departure is explained in the
# stanza's comments.
DATERA_PUBLISHED = {
    "getuid_callout": "/lib/udev/scsi_id --whitelisted --replace-whitespace --page=0x80 "
                      "--device=/dev/%n",
    "path_grouping_policy": "group_by_prio", "path_checker": "tur", "prio": "alua",
    "path_selector": "queue-length 0", "hardware_handler": "1 alua", "failback": "5"}
DATERA_DEPARTURES = {"getuid_callout": None}  # multipath-tools 0.9 ignores it
SILK_PUBLISHED = {
    "path_grouping_policy": "multibus", "path_checker": "tur",
    "path_selector": "queue-length 0", "no_path_retry": "fail", "hardware_handler": "0",
    "failback": "immediate", "fast_io_fail_tmo": "2", "dev_loss_tmo": "3",
    "max_sectors_kb": "256"}
K2_DEPARTURES = {"dev_loss_tmo": "60",  # measured over FCoE: see kaminario.conf
                 "max_sectors_kb": None}  # a KDP tuning, none published for K2


def test_two_vendor_stanzas_with_the_issue_settings() -> None:
    assert {s.name for s in STANZAS} == {"DATERA/IBLOCK", "KMNRIO/K2"}
    assert dict(DATERA.attrs) == {
        "path_grouping_policy": "group_by_prio", "prio": "alua",
        "hardware_handler": "1 alua", "path_checker": "tur",
        "path_selector": "queue-length 0", "failback": "5"}
    k2 = dict(K2.attrs)
    assert k2["path_grouping_policy"] == "multibus" and k2["no_path_retry"] == "fail"
    assert k2["hardware_handler"] == "0" and k2["path_selector"] == "queue-length 0"
    assert {"fast_io_fail_tmo", "dev_loss_tmo", "path_checker"} <= set(k2)


@pytest.mark.parametrize("stanza, published, departures", [
    (DATERA, DATERA_PUBLISHED, DATERA_DEPARTURES),
    (K2, SILK_PUBLISHED, K2_DEPARTURES),
], ids=["datera", "k2"])
def test_the_stanzas_are_the_vendors_published_values_but_the_explained_departures(
        stanza: Stanza, published: dict[str, str], departures: dict[str, str | None]) -> None:
    wanted = {k: v for k, v in {**published, **departures}.items() if v is not None}
    assert dict(stanza.attrs) == wanted
    comments = "\n".join(line for line in stanza.text.splitlines()
                         if line.lstrip().startswith("#"))
    for key in departures:  # each departure is explained in the file's comments
        assert re.search(rf"\b{key}\b", comments), key


def test_only_datera_asks_for_a_host_wide_default() -> None:
    assert [(d.key, d.value) for d in DATERA.host_defaults] == [("checker_timeout", "5")]
    assert K2.host_defaults == ()


@pytest.mark.parametrize("path", sorted(stanza_dir().glob("*.conf")), ids=lambda p: p.name)
def test_every_setting_says_where_it_comes_from(path: Path) -> None:
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines):
        words = line.split()
        if words and words[0] not in ("#", "devices", "device", "}", "vendor", "product") \
                and not words[0].startswith("#"):
            assert lines[n - 1].strip().startswith("#"), f"{path.name}:{n + 1} {line.strip()}"
    text = path.read_text()
    assert not re.search(r"^\s*getuid_callout", text, re.M)
    assert [b.name for b in parse(text).blocks] == ["devices"]  # no blacklist of any kind


# ---- resolution ------------------------------------------------------------------------

def test_builtin_table_differs_and_installed_stanzas_take_effect() -> None:
    builtin = parse(MULTIPATH_T_BUILTIN)
    assert any("path_grouping_policy" in d for d in stanza_differences(builtin, DATERA))
    # multipath-tools' own K2 entry already has multibus: only the rest differs.
    assert not any(d.startswith("path_grouping_policy") for d in stanza_differences(builtin, K2))
    assert stanza_differences(builtin, K2)
    stanzas = parse(MULTIPATH_T_STANZAS)
    assert stanza_differences(stanzas, DATERA) == []
    assert stanza_differences(stanzas, K2) == []


# ---- what multipathd writes into the transport ---------------------------------------

def test_mapped_timeouts_of_the_installed_stanzas() -> None:
    config = parse(MULTIPATH_T_STANZAS)
    # K2: its own fast_io_fail_tmo and dev_loss_tmo; no_path_retry "fail" raises nothing.
    assert mapped_timeouts(config, "KMNRIO", "K2") == MappedTimeouts(
        2, 60, "fast_io_fail_tmo from devices")
    # Datera: multipath's default fast_io_fail_tmo 5; no dev_loss_tmo, so none is raised
    # (the test bed's no_path_retry 6 x polling_interval 2 applies to set ones only).
    assert mapped_timeouts(config, "DATERA", "IBLOCK") == MappedTimeouts(
        5, None, "fast_io_fail_tmo from defaults")


def k2_with(*lines: str) -> Block:
    body = "".join(f"  {line}\n" for line in lines)
    return conf(f'devices {{\n device {{\n  vendor "KMNRIO"\n  product "K2"\n{body} }}\n}}\n')


@pytest.mark.parametrize("lines, recovery, dev_loss", [
    # dev_loss_tmo raised to no_path_retry x polling_interval (the fixture's 2 s) ...
    (("no_path_retry 6", "dev_loss_tmo 1"), 2, 12),
    # ... and to "infinity" with queue, without a limit of 600.
    (('no_path_retry "queue"', "dev_loss_tmo 30"), 2, MAX_DEV_LOSS_TMO),
    # fast_io_fail_tmo not smaller than dev_loss_tmo: turned off, the session keeps
    # replacement_timeout and an FC port's dev_loss_tmo is capped at 600.
    (("dev_loss_tmo 2",), None, 2),
    (("fast_io_fail_tmo 700", "dev_loss_tmo 650"), None, 600),
    (('fast_io_fail_tmo "off"',), None, 60),
    (("fast_io_fail_tmo 0",), None, 60),
    (('dev_loss_tmo "infinity"',), 2, MAX_DEV_LOSS_TMO),
])
def test_mapped_timeouts_follow_multipath_tools(lines: tuple[str, ...], recovery: int | None,
                                                dev_loss: int | None) -> None:
    got = mapped_timeouts(k2_with(*lines), "KMNRIO", "K2")
    assert (got.recovery_tmo, got.dev_loss_tmo) == (recovery, dev_loss), got
    if recovery is None:
        assert "fast_io_fail_tmo" in got.reason


def test_an_unset_fast_io_fail_tmo_leaves_the_session_alone() -> None:
    config = parse(MULTIPATH_T_STANZAS.replace("\tfast_io_fail_tmo 5\n", "", 1))
    got = mapped_timeouts(config, "DATERA", "IBLOCK")
    assert got == MappedTimeouts(None, None, "fast_io_fail_tmo is unset")


def test_overrides_win_over_the_device_stanza() -> None:
    config = conf('overrides {\n\tpath_selector "round-robin 0"\n}\n')
    got = effective(config, "DATERA", "IBLOCK", "path_selector")
    assert (got.value, got.source) == ("round-robin 0", "overrides")
    assert stanza_differences(config, DATERA) == [
        'path_selector: wants "queue-length 0", multipath uses "round-robin 0" '
        '(from overrides)']


def test_a_later_device_entry_for_the_vendor_wins() -> None:
    config = conf('devices {\n device {\n  vendor "DAT.*"\n  product ".*"\n'
                  '  path_grouping_policy "multibus"\n }\n}\n')
    assert effective(config, "DATERA", "IBLOCK", "path_grouping_policy").value == "multibus"
    assert effective(config, "KMNRIO", "K2", "path_grouping_policy").value == "multibus"


def test_default_blacklist_hides_no_vendor() -> None:
    assert blacklisted_by(parse(MULTIPATH_T_BUILTIN), "DATERA", "IBLOCK") is None
    assert blacklisted_by(parse(MULTIPATH_T_BUILTIN), "KMNRIO", "K2") is None


@pytest.mark.parametrize("entry, hides", [
    ('device {\n vendor ".*"\n product ".*"\n }', True),  # Datera's published catch-all
    ('device {\n vendor "KMNRIO"\n }', True),
    ('device {\n vendor "DATERA"\n product "OTHER"\n }', False),
    ('wwid ".*"', True),
    ('devnode "^sd[a-z]"', True),
    ('devnode "^nvme"', False),
])
def test_blacklist_entries_that_hide_a_vendor(entry: str, hides: bool) -> None:
    config = conf(f"blacklist {{\n{entry}\n}}\n")
    assert (blacklisted_by(config, "KMNRIO", "K2") is not None) == hides


def test_an_exception_unhides_the_vendor() -> None:
    config = conf('blacklist {\n device {\n vendor ".*"\n }\n}\n'
                  'blacklist_exceptions {\n device {\n vendor "KMNRIO"\n product "K2"\n }\n}\n')
    assert blacklisted_by(config, "KMNRIO", "K2") is None
    assert blacklisted_by(config, "DATERA", "IBLOCK") is not None


# ---- install ----------------------------------------------------------------------------

def test_install_writes_both_files_verifies_and_reconfigures(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.executor.expect(["multipath", "-t"], stdout=MULTIPATH_T_STANZAS, times=2)
    result = asyncio.run(node.mpconf.install())
    assert result.written == ("/etc/multipath/conf.d/datera.conf",
                              "/etc/multipath/conf.d/kaminario.conf")
    assert not result.created_conf and result.reconfigured
    for name in ("datera.conf", "kaminario.conf"):
        installed = node.root / "etc/multipath/conf.d" / name
        assert installed.read_text() == (stanza_dir() / name).read_text()
        assert stat.S_IMODE(installed.stat().st_mode) == 0o644
    assert node.mpd.commands == ["reconfigure"]
    again = asyncio.run(node.mpconf.install())
    assert again.written == () and len(again.unchanged) == 2
    node.executor.assert_done()


def test_install_follows_config_dir_and_creates_a_missing_multipath_conf(tmp_path: Path
                                                                         ) -> None:
    node = Node(tmp_path)
    (node.root / "etc/multipath.conf").unlink()
    node.mpd.running = False
    node.executor.expect(["multipath", "-t"], stdout=MULTIPATH_T_STANZAS)
    result = asyncio.run(node.mpconf.install())
    assert result.created_conf and not result.reconfigured
    created = parse((node.root / "etc/multipath.conf").read_text())
    assert created.section("defaults").get("user_friendly_names") == "no"
    node.write("/etc/multipath.conf", 'defaults {\n config_dir "/etc/mp.d"\n}\n')
    node.executor.expect(["multipath", "-t"], stdout=MULTIPATH_T_STANZAS)
    assert asyncio.run(node.mpconf.install()).written[0] == "/etc/mp.d/datera.conf"


def test_install_fails_when_the_settings_do_not_take_effect(tmp_path: Path) -> None:
    node = Node(tmp_path)
    shadowed = MULTIPATH_T_STANZAS + 'overrides {\n\tno_path_retry "queue"\n}\n'
    node.executor.expect(["multipath", "-t"], stdout=shadowed)
    with pytest.raises(InvalidConfig, match="no_path_retry"):
        asyncio.run(node.mpconf.install())
    assert node.mpd.commands == []
