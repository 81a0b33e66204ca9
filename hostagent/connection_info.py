"""Parse Cinder's connection_info into a VolumeSpec.

Accepts the wrapped form `{"driver_volume_type": ..., "data": {...}}` or the bare
data dict. Every value here ends up in iscsiadm/multipath argv, node records
(files named after IQNs and portals) or sysfs writes, so validation is strict:
anything malformed raises InvalidRequest naming the dotted path of the key
("data.target_portals[1]"), before anything runs on the host. Pure: no I/O.

Field paths always start with "data", for the bare form too, so callers see the
same names whichever form Cinder used. Error messages never quote CHAP secrets.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Final, TypeVar, cast

from hostagent.errors import InvalidRequest
from hostagent.models import Access, Chap, FcVolume, IscsiTarget, IscsiVolume, Portal, VolumeSpec

__all__ = ["parse", "parse_fc", "parse_iscsi", "parse_portal", "parse_wwpn"]

T = TypeVar("T")

DEFAULT_ISCSI_PORT: Final = 3260
MAX_LUN: Final = 16383  # SAM flat addressing: 14 bits
MAX_IQN_BYTES: Final = 223  # RFC 3720 3.2.6.1
# open-iscsi keeps CHAP names and secrets in 256-byte NUL-terminated buffers.
MAX_CHAP_LEN: Final = 255
MAX_VOLUME_ID_LEN: Final = 255
MAX_WWN_LEN: Final = 64
MAX_HOSTNAME_LEN: Final = 253
MAX_PORTAL_LEN: Final = MAX_HOSTNAME_LEN + 8  # host, ':' and a port; or [IPv6]:port
# Far beyond any real array's port count; bounds work done on hostile input.
MAX_ITEMS: Final = 256

ISCSI: Final = "iscsi"
FIBRE_CHANNEL: Final = "fibre_channel"
ISCSI_KEYS: Final = ("target_iqn", "target_iqns", "target_portal", "target_portals")
FC_KEYS: Final = ("target_wwn", "target_wwns")
FC_ADDRESSING_MODES: Final = frozenset({"transparent", "SAM", "SAM2", "SAM3-flat"})

# re.ASCII and [0-9] rather than \d: Unicode digits must not pass as a year or port.
_IQN_RE = re.compile(
    r"iqn\.[0-9]{4}-(?:0[1-9]|1[0-2])"
    r"\.[a-z0-9][a-z0-9-]*(?:\.[a-z0-9][a-z0-9-]*)*"  # reversed domain, lowercase
    # The naming authority's part. No '/', which would escape open-iscsi's
    # per-IQN record directory, and no shell or quoting characters.
    r"(?::[A-Za-z0-9._:+=@,-]+)?",
    re.ASCII,
)
_EUI_RE = re.compile(r"eui\.[0-9A-Fa-f]{16}", re.ASCII)
_NAA_RE = re.compile(r"naa\.(?:[0-9A-Fa-f]{16}|[0-9A-Fa-f]{32})", re.ASCII)
_PORT_RE = re.compile(r"[0-9]{1,5}", re.ASCII)
_BRACKETED_RE = re.compile(r"\[([^\[\]]+)\](?::(.*))?", re.ASCII)
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
_WWPN_RE = re.compile(r"[0-9a-f]{16}", re.ASCII)
_WWPN_COLON_RE = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){7}", re.ASCII)
_EXPECTED_WWN_RE = re.compile(r"[0-9a-z.:_-]+", re.ASCII)


# ---- entry points ----------------------------------------------------------------

def parse(obj: object) -> VolumeSpec:
    """Cinder's connection_info as an IscsiVolume or FcVolume, in each form Cinder hands
    out: wrapped ({driver_volume_type, data}), flat (the attachments API's: data keys
    beside driver_volume_type) or bare (the data alone)."""
    if not isinstance(obj, Mapping):
        raise InvalidRequest("connection_info", f"must be a mapping, got {_type(obj)}")
    if "driver_volume_type" in obj or "data" in obj:
        return _parse_wrapped(obj)
    return _PARSERS[_infer_type(obj)](obj, "data")


def parse_iscsi(data: Mapping[str, object], path: str = "data") -> IscsiVolume:
    data = _mapping(data, path)
    targets, plural = _iscsi_targets(data, path)
    _flag(data, "target_discovered", path)  # checked, not used: see docs/connection-info.md
    return IscsiVolume(
        targets=targets,
        # Only a lone portal needs SendTargets (os-brick's multipath attach runs it
        # whatever target_discovered says); explicit lists are already complete.
        discover=not plural,
        chap=_chap(data, "auth_", path),
        discovery_chap=_chap(data, "discovery_auth_", path),
        volume_id=_volume_id(data, path),
        expected_wwn=_expected_wwn(data, path),
        access=_access(data, path),
    )


def parse_fc(data: Mapping[str, object], path: str = "data") -> FcVolume:
    data = _mapping(data, path)
    items = _fc_target_items(data, path)
    lun = _fc_lun(data, path, len(items))
    return FcVolume(
        # The same port listed twice (in two spellings, say) is still one port.
        target_wwpns=tuple(dict.fromkeys(parse_wwpn(v, f) for f, v in items)),
        lun=lun,
        initiator_target_map=_initiator_target_map(data, path),
        volume_id=_volume_id(data, path),
        expected_wwn=_expected_wwn(data, path),
        addressing_mode=_addressing_mode(data, path),
        access=_access(data, path),
    )


def _parse_wrapped(given: Mapping[object, object]) -> VolumeSpec:
    obj = cast(Mapping[str, object], given)  # a str key or none: .get() of str keys only
    kind = obj.get("driver_volume_type")
    if not isinstance(kind, str) or kind.lower() not in _PARSERS:
        raise InvalidRequest(
            "driver_volume_type", f"must be 'iscsi' or 'fibre_channel', got {_show(kind)}")
    if "data" not in obj and any(k in obj for k in (*ISCSI_KEYS, *FC_KEYS)):
        # Cinder's attachments API (3.27+) hands out attachment.connection_info flat:
        # the data keys beside driver_volume_type, attachment_id, enforce_multipath.
        return _PARSERS[kind.lower()](obj, "connection_info")
    data = obj.get("data")
    if not isinstance(data, Mapping):
        raise InvalidRequest("data", f"must be a mapping, got {_type(data)} (nor are target "
                             "keys beside driver_volume_type, the flat form)")
    spec = _PARSERS[kind.lower()](data, "data")
    if _flag(obj, "enforce_multipath", "connection_info"):
        # Beside data, where Cinder copies it from the connector.
        spec = replace(spec, access=replace(spec.access, enforce_multipath=True))
    return spec


def _infer_type(data: Mapping[object, object]) -> str:
    iscsi = any(data.get(k) is not None for k in ISCSI_KEYS)
    fc = any(data.get(k) is not None for k in FC_KEYS)
    if iscsi and fc:
        raise InvalidRequest("data", "has both iSCSI and Fibre Channel target keys")
    if not (iscsi or fc):
        raise InvalidRequest(
            "data", "has no target keys (target_portal/target_iqn or target_wwn)")
    return ISCSI if iscsi else FIBRE_CHANNEL


_PARSERS: Final[dict[str, Callable[[Mapping[str, object], str], VolumeSpec]]] = {
    ISCSI: parse_iscsi,
    FIBRE_CHANNEL: parse_fc,
}


# ---- iSCSI -----------------------------------------------------------------------

def _iscsi_targets(
    data: Mapping[str, object], path: str,
) -> tuple[tuple[IscsiTarget, ...], bool]:
    """The targets, and whether they came from the plural lists."""
    # Singular keys are checked even when the lists win: garbage there means
    # a broken producer, and os-brick may still read them.
    lun = _lun(data.get("target_lun", 0), f"{path}.target_lun")
    portal = _optional(data, "target_portal", path, parse_portal)
    iqn = _optional(data, "target_iqn", path, _iscsi_name)
    if data.get("target_portals") is not None and data.get("target_iqns") is not None:
        return _zipped_targets(data, path, lun), True
    if portal is None:
        raise InvalidRequest(f"{path}.target_portal",
                             "is required (or target_portals with target_iqns)")
    if iqn is None:
        raise InvalidRequest(f"{path}.target_iqn",
                             "is required (or target_portals with target_iqns)")
    return (IscsiTarget(portal, iqn, lun),), False


def _zipped_targets(
    data: Mapping[str, object], path: str, default_lun: int,
) -> tuple[IscsiTarget, ...]:
    portals = _items(data, "target_portals", path)
    iqns = _items(data, "target_iqns", path)
    _same_length(iqns, len(portals), f"{path}.target_iqns")
    if data.get("target_luns") is None:
        luns = [default_lun] * len(portals)
    else:
        lun_items = _items(data, "target_luns", path)
        _same_length(lun_items, len(portals), f"{path}.target_luns")
        luns = [_lun(v, f) for f, v in lun_items]
    targets = (
        IscsiTarget(parse_portal(pv, pf), _iscsi_name(iv, i_f), lun)
        for (pf, pv), (i_f, iv), lun in zip(portals, iqns, luns, strict=True)
    )
    # Repeats would only mean a second login attempt to the same session.
    return tuple(dict.fromkeys(targets))


def parse_portal(value: object, field: str) -> Portal:
    """"host[:port]" with an IPv4 address, "[IPv6]" or a DNS name; port defaults to 3260."""
    text = _text(value, field, max_len=MAX_PORTAL_LEN)
    bracketed = _BRACKETED_RE.fullmatch(text)
    if bracketed:
        return Portal(_ipv6(bracketed.group(1), field), _port(bracketed.group(2), field))
    if text.startswith("["):
        raise InvalidRequest(field, f"expected [IPv6]:port, got {_show(text)}")
    if text.count(":") > 1:
        raise InvalidRequest(field, f"an IPv6 portal needs brackets, as in [fe80::1]:3260, "
                                    f"got {_show(text)}")
    host, colon, port = text.partition(":")
    return Portal(_host(host, field), _port(port if colon else None, field))


def _ipv6(text: str, field: str) -> str:
    # A zone id ("%eth0") would be an unchecked interface name passed to iscsiadm.
    if "%" in text:
        raise InvalidRequest(field, "IPv6 zone ids are not supported")
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise InvalidRequest(field, f"{_show(text)} is not an IPv6 address") from None


def _host(text: str, field: str) -> str:
    if not text:
        raise InvalidRequest(field, "has no host")
    if all(c.isdigit() or c == "." for c in text):
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise InvalidRequest(field, f"{_show(text)} is not an IPv4 address") from None
    return _hostname(text, field)


def _hostname(text: str, field: str) -> str:
    labels = text.split(".")
    if len(text) > MAX_HOSTNAME_LEN or not all(_LABEL_RE.fullmatch(lb) for lb in labels):
        raise InvalidRequest(field, f"{_show(text)} is not an IP address or DNS name")
    # The resolver reads "0x7f000001" or "10.1" as numeric addresses (inet_aton);
    # a real top-level label starts with a letter, so this shuts out such aliases.
    if not labels[-1][0].isalpha():
        raise InvalidRequest(field, f"{_show(text)} is neither a valid IP address nor a "
                                    f"DNS name (its last label must start with a letter)")
    return text.lower()


def _port(text: str | None, field: str) -> int:
    if text is None:
        return DEFAULT_ISCSI_PORT
    if not _PORT_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise InvalidRequest(field, f"port must be 1..65535, got {_show(text)}")
    return int(text)


def _iscsi_name(value: object, field: str) -> str:
    text = _text(value, field, max_len=MAX_IQN_BYTES)
    if not (_IQN_RE.fullmatch(text) or _EUI_RE.fullmatch(text) or _NAA_RE.fullmatch(text)):
        raise InvalidRequest(field, f"{_show(text)} is not an iSCSI name "
                                    "(iqn.YYYY-MM.domain[:id], eui.<16 hex>, naa.<16|32 hex>)")
    return text


def _chap(data: Mapping[str, object], prefix: str, path: str) -> Chap | None:
    method = data.get(f"{prefix}method")
    if method is None or method == "":
        # os-brick ignores credentials without a method; so do we.
        return None
    if not isinstance(method, str) or method.lower() != "chap":
        raise InvalidRequest(f"{path}.{prefix}method",
                             f"must be 'CHAP' or empty, got {_show(method)}")
    username = _credential(data, f"{prefix}username", path, prefix)
    password = _credential(data, f"{prefix}password", path, prefix)
    username_in, password_in = _mutual_chap(data, prefix, path)
    return Chap(username, password, username_in, password_in)


def _credential(data: Mapping[str, object], key: str, path: str, prefix: str) -> str:
    value = data.get(key)
    if value is None:
        raise InvalidRequest(f"{path}.{key}", f"is required when {prefix}method is CHAP")
    return _chap_text(value, f"{path}.{key}")


def _mutual_chap(
    data: Mapping[str, object], prefix: str, path: str,
) -> tuple[str | None, str | None]:
    user_key, pass_key = f"{prefix}username_in", f"{prefix}password_in"
    user, password = data.get(user_key), data.get(pass_key)
    has_user, has_pass = user not in (None, ""), password not in (None, "")
    if not (has_user or has_pass):
        return None, None
    if not has_pass:
        raise InvalidRequest(f"{path}.{pass_key}", f"is required with {user_key}")
    if not has_user:
        raise InvalidRequest(f"{path}.{user_key}", f"is required with {pass_key}")
    return _chap_text(user, f"{path}.{user_key}"), _chap_text(password, f"{path}.{pass_key}")


def _chap_text(value: object, field: str) -> str:
    # Never quotes the value: it may be a secret.
    text = _text(value, field, max_len=MAX_CHAP_LEN)
    if not text.isascii():
        raise InvalidRequest(field, "must be printable ASCII")
    return text


# ---- Fibre Channel ---------------------------------------------------------------

def _fc_target_items(data: Mapping[str, object], path: str) -> list[tuple[str, object]]:
    # os-brick's precedence: target_wwns, then target_wwn as a list or a string.
    if data.get("target_wwns") is not None:
        return _items(data, "target_wwns", path)
    single = data.get("target_wwn")
    if isinstance(single, str):
        return [(f"{path}.target_wwn", single)]
    if single is not None:
        return _items(data, "target_wwn", path)
    raise InvalidRequest(f"{path}.target_wwn", "is required (or target_wwns)")


def _fc_lun(data: Mapping[str, object], path: str, target_count: int) -> int:
    lun = _lun(data.get("target_lun", 0), f"{path}.target_lun")
    if data.get("target_luns") is None:
        return lun
    items = _items(data, "target_luns", path)
    _same_length(items, target_count, f"{path}.target_luns")
    luns = [_lun(v, f) for f, v in items]
    if len(set(luns)) != 1:
        # FcVolume has one LUN: per-target LUN ids are not supported.
        raise InvalidRequest(f"{path}.target_luns",
                             f"must be the same LUN for every target, got {luns}")
    return luns[0]


def _addressing_mode(data: Mapping[str, object], path: str) -> str | None:
    # How the array numbers LUNs above 255 (os-brick's addressing_mode); None: as given.
    mode = data.get("addressing_mode")
    if mode is not None and (not isinstance(mode, str) or mode not in FC_ADDRESSING_MODES):
        raise InvalidRequest(
            f"{path}.addressing_mode",
            f"must be one of {sorted(FC_ADDRESSING_MODES)}, got {_show(mode)}")
    return mode


def _initiator_target_map(
    data: Mapping[str, object], path: str,
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    field = f"{path}.initiator_target_map"
    raw = data.get("initiator_target_map")
    if raw is None:
        return ()
    raw = _mapping(raw, field)
    if len(raw) > MAX_ITEMS:
        raise InvalidRequest(field, f"has more than {MAX_ITEMS} initiators")
    result: dict[str, tuple[str, ...]] = {}
    for key in raw:
        # A bad key is not echoed into the field path: it is untrusted text.
        initiator = parse_wwpn(key, field)
        if initiator in result:
            raise InvalidRequest(field, f"initiator {initiator} is listed twice")
        targets = _items(raw, key, field)
        result[initiator] = tuple(dict.fromkeys(parse_wwpn(v, f) for f, v in targets))
    return tuple(sorted(result.items()))


def parse_wwpn(value: object, field: str) -> str:
    """A WWPN as 16 lowercase hex digits; accepts "0x" and colon-separated forms."""
    text = _text(value, field, max_len=25)  # "0x" + 8 colon-separated bytes
    wwpn = text.lower().removeprefix("0x")
    if _WWPN_COLON_RE.fullmatch(wwpn):
        wwpn = wwpn.replace(":", "")
    if not _WWPN_RE.fullmatch(wwpn):
        raise InvalidRequest(field, f"{_show(text)} is not a WWPN (16 hex digits)")
    if wwpn == "0" * 16:
        raise InvalidRequest(field, "the all-zero WWPN is not a valid port name")
    return wwpn


# ---- shared fields ---------------------------------------------------------------

def _lun(value: object, field: str) -> int:
    # type() rather than isinstance(): bool is an int subclass and True is not LUN 1.
    if type(value) is not int:
        raise InvalidRequest(field, f"must be an integer LUN, got {_type(value)}")
    if not 0 <= value <= MAX_LUN:
        raise InvalidRequest(field, f"must be 0..{MAX_LUN}, got {value}")
    return value


def _volume_id(data: Mapping[str, object], path: str) -> str | None:
    value = data.get("volume_id")
    if value is None or value == "":
        return None
    return _text(value, f"{path}.volume_id", max_len=MAX_VOLUME_ID_LEN)


def _expected_wwn(data: Mapping[str, object], path: str) -> str | None:
    field = f"{path}.expected_wwn"
    value = data.get("expected_wwn")
    if value is None:
        return None
    text = _text(value, field, max_len=MAX_WWN_LEN).lower()
    if not _EXPECTED_WWN_RE.fullmatch(text):
        raise InvalidRequest(field, f"must be letters, digits and . : _ -, got {_show(text)}")
    return text


def _access(data: Mapping[str, object], path: str) -> Access:
    mode = data.get("access_mode")
    if mode is not None and mode not in ("rw", "ro"):
        raise InvalidRequest(f"{path}.access_mode", f"must be 'rw' or 'ro', got {_show(mode)}")
    return Access(read_only=mode == "ro", encrypted=_flag(data, "encrypted", path),
                  enforce_multipath=_flag(data, "enforce_multipath", path))


def _flag(data: Mapping[str, object], key: str, path: str) -> bool:
    value = data.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"{path}.{key}", f"must be a boolean, got {_type(value)}")
    return value


# ---- generic checks --------------------------------------------------------------

def _mapping(value: object, field: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise InvalidRequest(field, f"must be a mapping, got {_type(value)}")
    return value


def _text(value: object, field: str, *, max_len: int) -> str:
    """A non-empty printable string. Messages leave the value out (it may be secret)."""
    if not isinstance(value, str):
        raise InvalidRequest(field, f"must be a string, got {_type(value)}")
    if not value:
        raise InvalidRequest(field, "must not be empty")
    if len(value) > max_len:
        raise InvalidRequest(field, f"is longer than {max_len} characters")
    if not value.isprintable():
        raise InvalidRequest(field, "contains control or non-printable characters")
    return value


def _items(data: Mapping[str, object], key: str, path: str) -> list[tuple[str, object]]:
    """A list's elements, each with its own field path."""
    field = f"{path}.{key}"
    value = data.get(key)
    if not isinstance(value, list | tuple):
        raise InvalidRequest(field, f"must be a list, got {_type(value)}")
    if not value:
        raise InvalidRequest(field, "must not be empty")
    if len(value) > MAX_ITEMS:
        raise InvalidRequest(field, f"has more than {MAX_ITEMS} entries")
    return [(f"{field}[{i}]", v) for i, v in enumerate(value)]


def _same_length(items: Sequence[object], expected: int, field: str) -> None:
    if len(items) != expected:
        raise InvalidRequest(field, f"has {len(items)} entries, expected {expected} "
                                    "(one per target)")


def _optional(
    data: Mapping[str, object], key: str, path: str, parser: Callable[[object, str], T],
) -> T | None:
    value = data.get(key)
    return None if value is None else parser(value, f"{path}.{key}")


def _type(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _show(value: object) -> str:
    # repr() escapes control characters; the cap keeps hostile input out of logs.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
