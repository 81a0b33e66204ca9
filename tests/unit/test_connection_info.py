"""connection_info parsing: the shapes real Cinder drivers send, and hostile input."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from hostagent.connection_info import parse, parse_fc, parse_iscsi, parse_portal, parse_wwpn
from hostagent.errors import InvalidRequest
from hostagent.models import Access, Chap, FcVolume, IscsiTarget, IscsiVolume, Portal

DATERA_IQN = "iqn.2013-05.com.daterainc:tc:01:sn:4f2a9c0d1e7b3a55"
K2_IQN = "iqn.2009-01.com.kaminario:storage.k2.3b9f1c"
PORTAL_1, PORTAL_2 = "192.0.2.10:3260", "192.0.2.11:3260"
P1, P2 = Portal("192.0.2.10"), Portal("192.0.2.11")
VOLUME_ID = "c3f1d0e4-5b6a-4c2d-9e8f-7a6b5c4d3e2f"
SECRET = "s3cr3t-chap-Pa55"

T1, T2 = "2000000000000b01", "2000000000000b02"
I1, I2 = "1000000000000a01", "1000000000000a02"


def datera(*, multipath: bool = True) -> dict[str, Any]:
    # cinder/volume/drivers/datera/datera_api22.py
    data: dict[str, Any] = {
        "target_discovered": False,
        "target_iqn": DATERA_IQN,
        "target_portal": PORTAL_1,
        "target_lun": 0,
        "volume_id": VOLUME_ID,
        "discard": False,
    }
    if multipath:
        data.update(target_iqns=[DATERA_IQN, DATERA_IQN], target_portals=[PORTAL_1, PORTAL_2],
                    target_luns=[0, 0])
    return data


def k2(*, lun: int = 7, discovery: bool = True) -> dict[str, Any]:
    # cinder/volume/drivers/kaminario/kaminario_iscsi.py
    data: dict[str, Any] = {
        "target_discovered": True,
        "target_portal": PORTAL_1,
        "target_iqn": K2_IQN,
        "target_lun": lun,
    }
    if not discovery:
        data.update(target_iqns=[K2_IQN, K2_IQN], target_portals=[PORTAL_1, PORTAL_2],
                    target_luns=[lun, lun])
    return data


def k2_fc(target_wwn: object = None) -> dict[str, Any]:
    # cinder/volume/drivers/kaminario/kaminario_fc.py
    return {
        "target_discovered": True,
        "target_lun": 3,
        "target_wwn": [T1, T2] if target_wwn is None else target_wwn,
        "initiator_target_map": {I2: [T1, T2], I1: [T1, T2]},
    }


def wrap(data: object, kind: str = "iscsi") -> dict[str, Any]:
    return {"driver_volume_type": kind, "data": data}


def chap(data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    data.update(auth_method="CHAP", auth_username="user1", auth_password=SECRET, **extra)
    return data


def iscsi(obj: object) -> IscsiVolume:
    spec = parse(obj)
    assert isinstance(spec, IscsiVolume)
    return spec


def fc(obj: object) -> FcVolume:
    spec = parse(obj)
    assert isinstance(spec, FcVolume)
    return spec


# ---- iSCSI shapes ----------------------------------------------------------------

def test_datera_multipath_lists() -> None:
    spec = iscsi(wrap(datera()))
    assert spec == IscsiVolume(
        targets=(IscsiTarget(P1, DATERA_IQN, 0), IscsiTarget(P2, DATERA_IQN, 0)),
        discover=False, volume_id=VOLUME_ID,
    )


def test_datera_without_multipath_lists() -> None:
    # One portal and target_discovered false (Datera's driver without a multipath
    # connector): a multipath attach still asks SendTargets, as os-brick's does.
    spec = iscsi(wrap(datera(multipath=False)))
    assert spec.targets == (IscsiTarget(P1, DATERA_IQN, 0),)
    assert spec.discover is True
    assert spec.chap is None
    assert spec.volume_id == VOLUME_ID


def test_datera_with_chap() -> None:
    spec = iscsi(wrap(chap(datera())))
    assert spec.chap == Chap("user1", SECRET)
    assert spec.chap is not None and not spec.chap.mutual
    assert spec.discovery_chap is None
    assert spec.secrets() == (SECRET,)


def test_k2_singular_keys_ask_for_discovery() -> None:
    spec = iscsi(wrap(k2(lun=7)))
    assert spec.targets == (IscsiTarget(P1, K2_IQN, 7),)
    assert spec.discover is True
    assert spec.volume_id is None


def test_k2_disable_discovery_uses_the_lists() -> None:
    spec = iscsi(wrap(k2(lun=12, discovery=False)))
    assert spec.targets == (IscsiTarget(P1, K2_IQN, 12), IscsiTarget(P2, K2_IQN, 12))
    # Lists are complete: no SendTargets even though target_discovered is True.
    assert spec.discover is False


def test_bare_data_dict_equals_wrapped_form() -> None:
    assert parse(datera()) == parse(wrap(datera()))
    assert parse(k2()) == parse(wrap(k2()))
    assert parse(k2_fc()) == parse(wrap(k2_fc(), "fibre_channel"))


def flat(data: dict[str, Any], kind: str = "iscsi") -> dict[str, Any]:
    """attachment.connection_info as Cinder's attachments API (3.27+) gives it."""
    return {"driver_volume_type": kind, "attachment_id": "4b4f6d0c-attachment",
            "enforce_multipath": False, **data}


def test_the_attachments_apis_flat_form_equals_the_wrapped_one() -> None:
    assert parse(flat(datera())) == parse(wrap(datera()))
    assert parse(flat(k2())) == parse(wrap(k2()))
    assert parse(flat(k2_fc(), "fibre_channel")) == parse(wrap(k2_fc(), "fibre_channel"))


def test_a_bad_key_of_the_flat_form_is_named_where_it_stands() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(flat({**datera(), "target_portal": "not a portal"}))
    assert err.value.field.startswith("connection_info.target_portal")


def test_bare_form_infers_the_type() -> None:
    assert isinstance(parse(k2()), IscsiVolume)
    assert isinstance(parse({"target_wwns": [T1], "target_lun": 1}), FcVolume)


def test_driver_volume_type_is_case_insensitive() -> None:
    assert iscsi(wrap(k2(), "ISCSI")).targets == (IscsiTarget(P1, K2_IQN, 7),)
    assert fc(wrap(k2_fc(), "Fibre_Channel")).lun == 3


def test_target_luns_absent_repeats_target_lun() -> None:
    data = k2(lun=5, discovery=False)
    del data["target_luns"]
    assert [t.lun for t in iscsi(data).targets] == [5, 5]


def test_target_lun_defaults_to_zero() -> None:
    data = k2()
    del data["target_lun"]
    assert iscsi(data).targets[0].lun == 0


def test_distinct_iqns_per_portal_are_zipped_in_order() -> None:
    other = "iqn.2013-05.com.daterainc:tc:01:sn:other"
    data = datera()
    data.update(target_iqns=[DATERA_IQN, other], target_luns=[0, 4])
    assert iscsi(data).targets == (IscsiTarget(P1, DATERA_IQN, 0), IscsiTarget(P2, other, 4))


def test_duplicate_targets_are_dropped() -> None:
    data = datera()
    data.update(target_iqns=[DATERA_IQN] * 3, target_portals=[PORTAL_1, PORTAL_2, PORTAL_1],
                target_luns=[0, 0, 0])
    assert iscsi(data).targets == (IscsiTarget(P1, DATERA_IQN, 0), IscsiTarget(P2, DATERA_IQN, 0))


def test_plural_portals_without_iqns_fall_back_to_singular() -> None:
    # os-brick only zips when both lists are present.
    data = k2()
    data["target_portals"] = [PORTAL_1, PORTAL_2]
    spec = iscsi(data)
    assert spec.targets == (IscsiTarget(P1, K2_IQN, 7),)
    assert spec.discover is True


def test_ipv6_portal() -> None:
    data = k2()
    data["target_portal"] = "[fe80:0:0::1]:3261"
    target = iscsi(data).targets[0]
    assert target.portal == Portal("fe80::1", 3261)  # compressed, as iscsiadm prints it
    assert str(target.portal) == "[fe80::1]:3261"


def test_ipv6_portal_without_port() -> None:
    data = k2()
    data["target_portal"] = "[2001:db8::5]"
    assert iscsi(data).targets[0].portal == Portal("2001:db8::5", 3260)


def test_dns_name_portal() -> None:
    data = datera(multipath=False)
    data["target_portal"] = "Array-1.Example.COM:3260"
    assert iscsi(data).targets[0].portal == Portal("array-1.example.com", 3260)


@pytest.mark.parametrize(("text", "expected"), [
    ("192.0.2.1", Portal("192.0.2.1", 3260)),
    ("192.0.2.1:1", Portal("192.0.2.1", 1)),
    ("192.0.2.1:65535", Portal("192.0.2.1", 65535)),
    ("k2array", Portal("k2array", 3260)),
    ("[::1]:860", Portal("::1", 860)),
])
def test_portal_forms(text: str, expected: Portal) -> None:
    assert parse_portal(text, "f") == expected


def test_mutual_chap() -> None:
    data = chap(k2(), auth_username_in="target1", auth_password_in="tgt-secret-99")
    spec = iscsi(data)
    assert spec.chap == Chap("user1", SECRET, "target1", "tgt-secret-99")
    assert spec.chap is not None and spec.chap.mutual
    assert spec.secrets() == (SECRET, "tgt-secret-99")


def test_chap_method_is_case_insensitive() -> None:
    data = chap(k2())
    data["auth_method"] = "chap"
    assert iscsi(data).chap == Chap("user1", SECRET)


@pytest.mark.parametrize("method", [None, ""])
def test_no_auth_method_means_no_chap(method: str | None) -> None:
    data = chap(k2())
    data["auth_method"] = method
    assert iscsi(data).chap is None


def test_discovery_chap() -> None:
    data = k2()
    data.update(discovery_auth_method="CHAP", discovery_auth_username="disc",
                discovery_auth_password="disc-secret-1")
    spec = iscsi(data)
    assert spec.discovery_chap == Chap("disc", "disc-secret-1")
    assert spec.chap is None
    assert spec.secrets() == ("disc-secret-1",)


def test_mutual_discovery_chap_with_session_chap() -> None:
    data = chap(k2())
    data.update(discovery_auth_method="CHAP", discovery_auth_username="disc",
                discovery_auth_password="dpw", discovery_auth_username_in="arr",
                discovery_auth_password_in="apw")
    spec = iscsi(data)
    assert spec.chap == Chap("user1", SECRET)
    assert spec.discovery_chap == Chap("disc", "dpw", "arr", "apw")
    assert spec.secrets() == (SECRET, "dpw", "apw")


def test_expected_wwn_is_lowercased() -> None:
    data = k2()
    data["expected_wwn"] = "36001405ABCDEF0123456789ABCDEF012"
    assert iscsi(data).expected_wwn == "36001405abcdef0123456789abcdef012"


def test_extra_cinder_and_vendor_keys_are_ignored() -> None:
    data = datera()
    data.update(qos_specs={"total_iops_sec": 100}, access_mode="rw", encrypted=False,
                cacheable=True, logical_block_size="512", physical_block_size="4096",
                vendor_thing=["anything", 1])
    assert iscsi(data) == iscsi(datera())


def test_empty_volume_id_is_none() -> None:
    data = datera()
    data["volume_id"] = ""
    assert iscsi(data).volume_id is None


@pytest.mark.parametrize("name", [
    "iqn.1994-05.com.redhat:01.abc-def_1",
    "iqn.2009-01.com.kaminario",
    "eui.02004567A425678D",
    "naa.52004567ba64678d",
    "naa.52004567BA64678D52004567ba64678d",
])
def test_iscsi_name_forms(name: str) -> None:
    data = k2()
    data["target_iqn"] = name
    assert iscsi(data).targets[0].iqn == name


def test_iqn_at_the_length_limit() -> None:
    iqn = "iqn.2009-01.com.kaminario:" + "a" * (223 - len("iqn.2009-01.com.kaminario:"))
    data = k2()
    data["target_iqn"] = iqn
    assert iscsi(data).targets[0].iqn == iqn


def test_parse_iscsi_directly_with_a_path_prefix() -> None:
    assert parse_iscsi(k2(), "x").targets == (IscsiTarget(P1, K2_IQN, 7),)
    with pytest.raises(InvalidRequest) as err:
        parse_iscsi({"target_portal": PORTAL_1}, "req.data")
    assert err.value.field == "req.data.target_iqn"


# ---- Fibre Channel shapes --------------------------------------------------------

def test_k2_fc_target_wwn_list() -> None:
    spec = fc(wrap(k2_fc(), "fibre_channel"))
    assert spec == FcVolume(
        target_wwpns=(T1, T2), lun=3,
        initiator_target_map=((I1, (T1, T2)), (I2, (T1, T2))),  # sorted by initiator
    )


def test_k2_fc_target_wwn_string() -> None:
    spec = fc(wrap(k2_fc(target_wwn=T2), "fibre_channel"))
    assert spec.target_wwpns == (T2,)
    assert spec.lun == 3


def test_fc_target_wwns_with_target_luns() -> None:
    data = {"target_wwns": [T1, T2], "target_luns": [9, 9], "addressing_mode": "SAM2",
            "volume_id": VOLUME_ID, "expected_wwn": "3600A0B8"}
    spec = fc(wrap(data, "fibre_channel"))
    assert spec == FcVolume(target_wwpns=(T1, T2), lun=9, volume_id=VOLUME_ID,
                            expected_wwn="3600a0b8", addressing_mode="SAM2")


def test_fc_target_wwns_wins_over_target_wwn() -> None:
    spec = fc({"target_wwns": [T2], "target_wwn": [T1], "target_lun": 0})
    assert spec.target_wwpns == (T2,)


def test_fc_target_lun_defaults_to_zero() -> None:
    assert fc({"target_wwn": T1}).lun == 0


@pytest.mark.parametrize("mode", ["transparent", "SAM", "SAM2", "SAM3-flat", None])
def test_fc_addressing_modes(mode: str | None) -> None:
    spec = fc({"target_wwns": [T1], "target_lun": 2, "addressing_mode": mode})
    assert spec.lun == 2 and spec.addressing_mode == mode


@pytest.mark.parametrize(("raw", "expected"), [
    ("2000000000000B01", T1),
    ("20:00:00:00:00:00:0b:01", T1),
    ("20:00:00:00:00:00:0B:01", T1),
    ("0x2000000000000b01", T1),
    ("0X20:00:00:00:00:00:0b:01", T1),
])
def test_wwpn_normalization(raw: str, expected: str) -> None:
    assert parse_wwpn(raw, "f") == expected


def test_wwpns_normalized_and_deduplicated_in_order() -> None:
    data = k2_fc(target_wwn=["20:00:00:00:00:00:0B:02", "0x2000000000000b01", T2])
    data["initiator_target_map"] = {"10:00:00:00:00:00:0A:01": ["0x2000000000000B01", T1]}
    spec = fc(data)
    assert spec.target_wwpns == (T2, T1)
    assert spec.initiator_target_map == ((I1, (T1,)),)


def test_fc_without_initiator_target_map() -> None:
    data = k2_fc()
    del data["initiator_target_map"]
    assert fc(data).initiator_target_map == ()


def test_parse_fc_directly() -> None:
    assert parse_fc(k2_fc()).target_wwpns == (T1, T2)


# ---- hostile input ---------------------------------------------------------------

MISSING = object()


def edit(base: Callable[[], dict[str, Any]], **changes: Any) -> dict[str, Any]:
    """`base()` with keys set, or removed when the value is MISSING."""
    data = copy.deepcopy(base())
    for key, value in changes.items():
        if value is MISSING:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def k2_chap() -> dict[str, Any]:
    return chap(k2())


def disc_chap() -> dict[str, Any]:
    return dict(k2(), discovery_auth_method="CHAP", discovery_auth_username="d",
                discovery_auth_password="dpw")


HOSTILE: list[tuple[str, object, str]] = [
    # -- structure
    ("top level not a mapping", [datera()], "connection_info"),
    ("top level a string", "iscsi", "connection_info"),
    ("data not a dict", wrap([datera()]), "data"),
    ("data a string", wrap("target_portal=1.2.3.4"), "data"),
    ("data missing", {"driver_volume_type": "iscsi"}, "data"),
    ("driver_volume_type nfs", wrap(datera(), "nfs"), "driver_volume_type"),
    ("driver_volume_type missing", {"data": datera()}, "driver_volume_type"),
    ("driver_volume_type not a string", wrap(datera(), ["iscsi"]), "driver_volume_type"),  # type: ignore[arg-type]
    ("bare form with no target keys", {"volume_id": VOLUME_ID}, "data"),
    ("bare form with iSCSI and FC keys", dict(k2(), target_wwn=T1), "data"),
    ("iscsi without portal", edit(k2, target_portal=MISSING), "data.target_portal"),
    ("iscsi without iqn", edit(k2, target_iqn=MISSING), "data.target_iqn"),
    # -- list lengths
    ("fewer iqns than portals", edit(datera, target_iqns=[DATERA_IQN]), "data.target_iqns"),
    ("more luns than portals", edit(datera, target_luns=[0, 0, 0]), "data.target_luns"),
    ("fewer luns than portals", edit(datera, target_luns=[0]), "data.target_luns"),
    ("empty portal list", edit(datera, target_portals=[], target_iqns=[], target_luns=[]),
     "data.target_portals"),
    ("portal list is a string", edit(datera, target_portals=PORTAL_1), "data.target_portals"),
    ("iqn list is a string", edit(datera, target_iqns=DATERA_IQN), "data.target_iqns"),
    ("huge portal list", edit(datera, target_portals=[PORTAL_1] * 1000,
                              target_iqns=[DATERA_IQN] * 1000, target_luns=[0] * 1000),
     "data.target_portals"),
    # -- LUNs
    ("bool LUN", edit(k2, target_lun=True), "data.target_lun"),
    ("bool in target_luns", edit(datera, target_luns=[0, False]), "data.target_luns[1]"),
    ("negative LUN", edit(k2, target_lun=-1), "data.target_lun"),
    ("LUN 16384", edit(k2, target_lun=16384), "data.target_lun"),
    ("LUN as string", edit(k2, target_lun="1"), "data.target_lun"),
    ("LUN as float", edit(k2, target_lun=1.0), "data.target_lun"),
    ("LUN None", edit(k2, target_lun=None), "data.target_lun"),
    ("list LUN as string", edit(datera, target_luns=[0, "0"]), "data.target_luns[1]"),
    # -- IQNs
    ("IQN with ;", edit(k2, target_iqn=K2_IQN + ";reboot"), "data.target_iqn"),
    ("IQN with newline", edit(k2, target_iqn=K2_IQN + "\n"), "data.target_iqn"),
    ("IQN with NUL", edit(k2, target_iqn=K2_IQN + "\x00x"), "data.target_iqn"),
    ("IQN with $()", edit(k2, target_iqn="iqn.2009-01.com.k2:$(id)"), "data.target_iqn"),
    ("IQN with backtick", edit(k2, target_iqn="iqn.2009-01.com.k2:`id`"), "data.target_iqn"),
    ("IQN with slash", edit(k2, target_iqn="iqn.2009-01.com.k2:../../etc"), "data.target_iqn"),
    ("IQN with space", edit(k2, target_iqn="iqn.2009-01.com.k2:a b"), "data.target_iqn"),
    ("over-long IQN", edit(k2, target_iqn="iqn.2009-01.com.k2:" + "a" * 205), "data.target_iqn"),
    ("huge IQN", edit(k2, target_iqn="iqn.2009-01.com.k2:" + "a" * 10**6), "data.target_iqn"),
    ("IQN month 13", edit(k2, target_iqn="iqn.2009-13.com.k2:x"), "data.target_iqn"),
    ("IQN uppercase prefix", edit(k2, target_iqn="IQN.2009-01.com.k2:x"), "data.target_iqn"),
    ("IQN not a name", edit(k2, target_iqn="storage.k2"), "data.target_iqn"),
    ("eui too short", edit(k2, target_iqn="eui.0123456789abcde"), "data.target_iqn"),
    ("naa of 20 digits", edit(k2, target_iqn="naa." + "1" * 20), "data.target_iqn"),
    ("IQN as list", edit(k2, target_iqn=[K2_IQN]), "data.target_iqn"),
    ("bad iqn in list", edit(datera, target_iqns=[DATERA_IQN, "iqn.x|y"]), "data.target_iqns[1]"),
    # -- portals
    ("port 0", edit(k2, target_portal="192.0.2.1:0"), "data.target_portal"),
    ("port 70000", edit(k2, target_portal="192.0.2.1:70000"), "data.target_portal"),
    ("port abc", edit(k2, target_portal="192.0.2.1:abc"), "data.target_portal"),
    ("empty port", edit(k2, target_portal="192.0.2.1:"), "data.target_portal"),
    ("unicode digits port", edit(k2, target_portal="192.0.2.1:\u0663\u0662"),
     "data.target_portal"),
    ("portal with spaces", edit(k2, target_portal="192.0.2.1 :3260"), "data.target_portal"),
    ("portal with inner space", edit(k2, target_portal="array one:3260"), "data.target_portal"),
    ("portal with ;", edit(k2, target_portal="a;reboot:3260"), "data.target_portal"),
    ("bad portal in list", edit(datera, target_portals=[PORTAL_1, "192.0.2.11:0"]),
     "data.target_portals[1]"),
    ("bad IPv4", edit(k2, target_portal="192.0.2.300:3260"), "data.target_portal"),
    ("IPv4 leading zeros", edit(k2, target_portal="010.0.0.1"), "data.target_portal"),
    ("inet_aton shorthand", edit(k2, target_portal="10.1:3260"), "data.target_portal"),
    ("inet_aton hex", edit(k2, target_portal="0x7f000001:3260"), "data.target_portal"),
    ("unbracketed IPv6", edit(k2, target_portal="fe80::1:3260"), "data.target_portal"),
    ("bracketed junk", edit(k2, target_portal="[fe80::1]x3260"), "data.target_portal"),
    ("bracketed IPv4", edit(k2, target_portal="[192.0.2.1]:3260"), "data.target_portal"),
    ("IPv6 zone id", edit(k2, target_portal="[fe80::1%eth0]:3260"), "data.target_portal"),
    ("empty host", edit(k2, target_portal=":3260"), "data.target_portal"),
    ("empty portal", edit(k2, target_portal=""), "data.target_portal"),
    ("portal as int", edit(k2, target_portal=3260), "data.target_portal"),
    ("huge portal", edit(k2, target_portal="a" * 10**5), "data.target_portal"),
    # -- target_discovered
    ("target_discovered string", edit(k2, target_discovered="false"), "data.target_discovered"),
    # -- CHAP
    ("CHAP method PAP", edit(k2_chap, auth_method="PAP"), "data.auth_method"),
    ("CHAP method not a string", edit(k2_chap, auth_method=1), "data.auth_method"),
    ("CHAP without password", edit(k2_chap, auth_password=MISSING), "data.auth_password"),
    ("CHAP empty password", edit(k2_chap, auth_password=""), "data.auth_password"),
    ("CHAP without username", edit(k2_chap, auth_username=MISSING), "data.auth_username"),
    ("CHAP username newline", edit(k2_chap, auth_username="u\nnode.startup = automatic"),
     "data.auth_username"),
    ("CHAP password NUL", edit(k2_chap, auth_password="pw\x00"), "data.auth_password"),
    ("CHAP password too long", edit(k2_chap, auth_password="p" * 256), "data.auth_password"),
    ("CHAP password non-ASCII", edit(k2_chap, auth_password="pässwörd"), "data.auth_password"),
    ("CHAP password a list", edit(k2_chap, auth_password=["pw"]), "data.auth_password"),
    ("mutual username only", edit(k2_chap, auth_username_in="tgt"), "data.auth_password_in"),
    ("mutual password only", edit(k2_chap, auth_password_in="tpw"), "data.auth_username_in"),
    ("mutual password NUL", edit(k2_chap, auth_username_in="t", auth_password_in="\x00"),
     "data.auth_password_in"),
    ("discovery CHAP method", edit(disc_chap, discovery_auth_method="none"),
     "data.discovery_auth_method"),
    ("discovery CHAP no password", edit(disc_chap, discovery_auth_password=MISSING),
     "data.discovery_auth_password"),
    ("discovery mutual half", edit(disc_chap, discovery_auth_username_in="a"),
     "data.discovery_auth_password_in"),
    # -- volume_id, expected_wwn
    ("volume_id with newline", edit(datera, volume_id="vol\n1"), "data.volume_id"),
    ("volume_id too long", edit(datera, volume_id="v" * 256), "data.volume_id"),
    ("volume_id not a string", edit(datera, volume_id=12), "data.volume_id"),
    ("expected_wwn with space", edit(k2, expected_wwn="3600 1405"), "data.expected_wwn"),
    ("expected_wwn with /", edit(k2, expected_wwn="../3600"), "data.expected_wwn"),
    ("expected_wwn too long", edit(k2, expected_wwn="3" * 65), "data.expected_wwn"),
    ("expected_wwn empty", edit(k2, expected_wwn=""), "data.expected_wwn"),
    # -- Fibre Channel
    ("WWPN too short", edit(k2_fc, target_wwn=[T1, "2000000000000b0"]), "data.target_wwn[1]"),
    ("WWPN too long", edit(k2_fc, target_wwn="20000200000000b01"), "data.target_wwn"),
    ("WWPN non-hex", edit(k2_fc, target_wwn=["200000000000000g"]), "data.target_wwn[0]"),
    ("WWPN bad colons", edit(k2_fc, target_wwn="2000:0000:0000:0b01"), "data.target_wwn"),
    ("WWPN with newline", edit(k2_fc, target_wwn=T1 + "\n"), "data.target_wwn"),
    ("WWPN all zero", edit(k2_fc, target_wwn="0" * 16), "data.target_wwn"),
    ("WWPN an int", edit(k2_fc, target_wwn=[0x2000000000000B01]), "data.target_wwn[0]"),
    ("no target WWN", wrap(edit(k2_fc, target_wwn=MISSING), "fibre_channel"),
     "data.target_wwn"),
    ("empty WWN list", edit(k2_fc, target_wwn=[]), "data.target_wwn"),
    ("target_wwns a string", {"target_wwns": T1}, "data.target_wwns"),
    ("bad target_wwns entry", {"target_wwns": [T1, "x"]}, "data.target_wwns[1]"),
    ("FC bool LUN", edit(k2_fc, target_lun=False), "data.target_lun"),
    ("FC LUN 16384", edit(k2_fc, target_lun=16384), "data.target_lun"),
    ("target_luns length", {"target_wwns": [T1, T2], "target_luns": [1]}, "data.target_luns"),
    ("target_luns differ", {"target_wwns": [T1, T2], "target_luns": [1, 2]}, "data.target_luns"),
    ("target_luns bool", {"target_wwns": [T1], "target_luns": [True]}, "data.target_luns[0]"),
    ("addressing_mode bad", edit(k2_fc, addressing_mode="flat"), "data.addressing_mode"),
    ("itmap not a mapping", edit(k2_fc, initiator_target_map=[I1]),
     "data.initiator_target_map"),
    ("itmap bad initiator", edit(k2_fc, initiator_target_map={"x;y": [T1]}),
     "data.initiator_target_map"),
    ("itmap duplicate initiator",
     edit(k2_fc, initiator_target_map={I1: [T1], "10:00:00:00:00:00:0a:01": [T2]}),
     "data.initiator_target_map"),
    ("itmap targets a string", edit(k2_fc, initiator_target_map={I1: T1}),
     f"data.initiator_target_map.{I1}"),
    ("itmap bad target", edit(k2_fc, initiator_target_map={I1: [T1, "zz"]}),
     f"data.initiator_target_map.{I1}[1]"),
    ("FC volume_id with newline", edit(k2_fc, volume_id="a\nb"), "data.volume_id"),
    ("iscsi type with FC data", wrap(k2_fc()), "data.target_portal"),
    ("FC type with iSCSI data", wrap(k2(), "fibre_channel"), "data.target_wwn"),
]


@pytest.mark.parametrize(("obj", "field"), [(o, f) for _, o, f in HOSTILE],
                         ids=[name for name, _, _ in HOSTILE])
def test_hostile_input_names_the_field(obj: object, field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(obj)
    assert err.value.field == field
    assert err.value.details["field"] == field
    assert err.value.to_dict()["code"] == "invalid_request"
    assert err.value.http_status == 400


def test_hostile_fc_input_through_the_wrapped_form_too() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(wrap(edit(k2_fc, target_wwn=["2000000000000b0"]), "fibre_channel"))
    assert err.value.field == "data.target_wwn[0]"


def test_errors_never_quote_chap_secrets() -> None:
    hostile = [
        edit(k2_chap, auth_password=SECRET + "\n"),
        edit(k2_chap, auth_password=SECRET * 20),
        edit(k2_chap, auth_password=SECRET + "é"),
        edit(k2_chap, auth_username_in="t", auth_password_in=SECRET + "\x01"),
    ]
    for data in hostile:
        with pytest.raises(InvalidRequest) as err:
            parse(data)
        assert SECRET not in str(err.value)
        assert SECRET not in repr(err.value.to_dict())


def test_error_messages_escape_control_characters() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(edit(k2, target_portal="10.0.0.1:32\x1b[2J"))
    assert "\x1b" not in str(err.value)
    assert err.value.field == "data.target_portal"


def test_long_bad_value_is_echoed_truncated() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(edit(k2, target_iqn="iqn.2009-01.com.k2:" + "a" * 180 + ";"))
    assert err.value.field == "data.target_iqn"
    assert "iqn.2009-01.com.k2:aaa" in err.value.message
    assert ";" not in err.value.message
    assert len(err.value.message) < 250


@pytest.mark.parametrize("value", [None, 0, 1.5, b"iqn", object(), ("a",), {1, 2}])
def test_non_mapping_top_level_values(value: object) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(value)
    assert err.value.field == "connection_info"


def test_parse_fc_rejects_a_non_mapping() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_fc([T1], "data")  # type: ignore[arg-type]
    assert err.value.field == "data"


# ---- access: access_mode, encrypted, enforce_multipath -----------------------------

def test_a_volume_says_nothing_of_access_gets_read_write() -> None:
    assert iscsi(wrap(datera())).access == Access()
    assert fc(wrap(k2_fc(), "fibre_channel")).access == Access()


@pytest.mark.parametrize("make", [lambda d: wrap(d), flat, lambda d: d],
                         ids=["wrapped", "flat", "bare"])
def test_access_fields_are_read_in_every_form(make: Callable[[dict[str, Any]], Any]) -> None:
    data = {**datera(), "access_mode": "ro", "encrypted": True, "enforce_multipath": True}
    assert iscsi(make(data)).access == Access(read_only=True, encrypted=True,
                                              enforce_multipath=True)


def test_enforce_multipath_beside_data_counts() -> None:
    # Cinder copies it from the connector next to data, not into it.
    obj = {**wrap(k2_fc(), "fibre_channel"), "enforce_multipath": True}
    assert fc(obj).access.enforce_multipath is True


@pytest.mark.parametrize(("key", "value", "field"), [
    ("access_mode", "RO", "data.access_mode"),
    ("access_mode", "readonly", "data.access_mode"),
    ("access_mode", 1, "data.access_mode"),
    ("encrypted", "yes", "data.encrypted"),
    ("enforce_multipath", 1, "data.enforce_multipath"),
])
def test_bad_access_fields_are_named(key: str, value: object, field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(wrap({**datera(), key: value}))
    assert err.value.field == field


def test_bad_enforce_multipath_beside_data_is_named() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse({**wrap(datera()), "enforce_multipath": "true"})
    assert err.value.field == "connection_info.enforce_multipath"


@pytest.mark.parametrize("discovered", [True, False, None])
def test_a_lone_portal_is_discovered_whatever_target_discovered_says(
        discovered: bool | None) -> None:
    data = {**datera(multipath=False), "target_discovered": discovered}
    assert iscsi(wrap(data)).discover is True
