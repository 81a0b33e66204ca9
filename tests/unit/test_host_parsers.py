"""Pure parsers of host tool output, on output captured in the guest."""

from __future__ import annotations

from pathlib import Path

from hostagent.host.iscsiadm import IscsiErr, chap_settings, edit_record, parse_discovery
from hostagent.host.multipath import (
    add_wwid_line,
    parse_map_infos,
    parse_maps_json,
    remove_wwid_line,
)
from hostagent.models import Chap, Portal

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "guest"


def test_exit_codes_follow_iscsi_err_h() -> None:
    assert IscsiErr.SESS_EXISTS == 15
    assert IscsiErr.FATAL_LOGIN == 19
    assert IscsiErr.ISCSID_NOTCONN == 20
    assert IscsiErr.NO_OBJS_FOUND == 21
    assert IscsiErr.LOGIN_AUTH_FAILED == 24


def test_parse_discovery_of_lio_sendtargets() -> None:
    found = parse_discovery((FIXTURES / "iscsiadm_discovery_nonpersistent.txt").read_text())
    assert len(found) == 4
    assert found[0].portal == Portal("127.0.0.1", 3260) and found[0].tpgt == 1
    assert found[1].portal == Portal("10.99.0.2", 3260)
    assert found[2].iqn.startswith("iqn.2009-01.com.kaminario:storage.k2.")


def test_parse_discovery_ipv6_and_noise() -> None:
    out = "iscsiadm: some warning\n[fe80::1]:3260,7 iqn.2001-05.com.example:t1\n\n"
    (target,) = parse_discovery(out)
    assert target.portal == Portal("fe80::1", 3260) and target.tpgt == 7
    assert str(target.portal) == "[fe80::1]:3260"


def test_edit_record_replaces_and_appends() -> None:
    text = (FIXTURES / "iscsiadm_node_record").read_text()
    chap = Chap("alice", "s3cret-pw", "target-bob", "in-pw")
    edited = edit_record(text, {"node.session.scan": "manual",
                                **chap_settings(chap, "node.session.auth")})
    lines = edited.splitlines()
    assert lines[0] == "# BEGIN RECORD 2.1.8"
    assert lines.count("node.session.scan = manual") == 1
    assert "node.session.auth.password = s3cret-pw" in lines
    assert "node.session.auth.password_in = in-pw" in lines
    assert sum(line.startswith("node.session.auth.authmethod") for line in lines) == 1
    assert "node.tpgt = -1" in lines


def test_chap_settings_without_chap_clears_the_method() -> None:
    assert chap_settings(None, "node.session.auth") == {"node.session.auth.authmethod": "None"}


def test_parse_maps_json() -> None:
    maps = parse_maps_json((FIXTURES / "multipathd_show_maps_json.json").read_text())
    (wwid, paths), = maps.items()
    assert wwid == "360014053611dae24c1b4e0eb33e6a8f5"
    assert sorted(p.device for p in paths) == ["sda", "sdb"]
    assert {(p.dm_state, p.checker) for p in paths} == {("active", "ready")}


def test_parse_map_infos_keeps_the_features() -> None:
    maps = parse_map_infos((FIXTURES / "multipathd_show_maps_json.json").read_text())
    info = maps["360014053611dae24c1b4e0eb33e6a8f5"]
    assert (info.sysfs, info.features) == ("dm-0", "1 queue_if_no_path")
    assert [p.device for p in info.paths] == ["sdb", "sda"]


def test_wwids_file_edits() -> None:
    text = (FIXTURES / "wwids").read_text()
    wwid = "360014053611dae24c1b4e0eb33e6a8f5"
    assert add_wwid_line(text, wwid) == text  # already there
    removed = remove_wwid_line(text, wwid)
    assert f"/{wwid}/" not in removed and removed.startswith("# Multipath wwids")
    assert add_wwid_line(removed, wwid).splitlines()[-1] == f"/{wwid}/"
    fresh = add_wwid_line("", "3abc")
    assert fresh.startswith("# Multipath wwids") and fresh.endswith("/3abc/\n")
