"""The hostile-input corpus shared by the API tests and the CLI tests (test_hostile.py).

Each value is put into one field of an otherwise valid request, so the 400 it gets
can only be for that field. The values are grouped by what a field's grammar
keeps out: shell metacharacters, spaces and quotes; control and invisible
characters (newline, NUL, escape sequences, bidi overrides, lone surrogates);
option-looking and dot-only values; path traversal; empty and over-long values;
wrong JSON types. A field is fed the groups its grammar refuses (a CHAP secret is
any printable ASCII, so it gets control characters, non-ASCII, over-long values
and wrong types only).

Cases are (name, field the API names, request body) for POST /v1/attachments,
(name, field, raw body bytes) for what json.dumps cannot write, and (name, field,
path or query) for the other routes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from hostagent.api.openapi import MAX_PREFLIGHT_PORTALS, MAX_TIMEOUT
from hostagent.connection_info import (
    MAX_CHAP_LEN,
    MAX_IQN_BYTES,
    MAX_LUN,
    MAX_PORTAL_LEN,
    MAX_VOLUME_ID_LEN,
)

IQN = "iqn.2013-05.com.daterainc:tc:01:sn:0123456789abcdef"
K2_IQN = "iqn.2009-01.com.kaminario:storage.k2.abc123"
P1, P2 = "127.0.0.1:3260", "10.99.0.2:3260"
T1, T2 = "2000020000000b01", "2000020000000b02"
I1, I2 = "2000020000000a01", "2000020000000a02"
MAX_BODY = 64 * 1024  # make_app's default
HUGE = 60_000  # characters: far over every field's limit, under the body limit

# ---- valid requests the values go into ---------------------------------------------------


def datera() -> dict[str, Any]:
    """Cinder's Datera iSCSI connection_info: per-portal lists."""
    return {"driver_volume_type": "iscsi", "data": {
        "target_discovered": False, "target_portals": [P1, P2], "target_iqns": [IQN, IQN],
        "target_luns": [0, 0], "volume_id": "vol-1"}}


def k2() -> dict[str, Any]:
    """Cinder's Kaminario K2 iSCSI connection_info: one portal, SendTargets, CHAP."""
    return {"driver_volume_type": "iscsi", "data": {
        "target_discovered": True, "target_portal": P1, "target_iqn": K2_IQN,
        "target_lun": 7, "auth_method": "CHAP", "auth_username": "alice",
        "auth_password": "s3cret-chap-pass", "expected_wwn": "36001405abc"}}


def k2_fc() -> dict[str, Any]:
    """Cinder's Kaminario K2 FC connection_info."""
    return {"driver_volume_type": "fibre_channel", "data": {
        "target_discovered": True, "target_wwn": [T1, T2], "target_lun": 3,
        "initiator_target_map": {I1: [T1, T2], I2: [T1, T2]}, "volume_id": "vol-2",
        "addressing_mode": "SAM2"}}


def fc_luns() -> dict[str, Any]:
    """The bare form (no driver_volume_type): FC with target_wwns and target_luns."""
    return {"target_wwns": [T1, T2], "target_luns": [3, 3]}


SHAPES: dict[str, Callable[[], dict[str, Any]]] = {
    "datera": datera, "k2": k2, "k2_fc": k2_fc, "fc_luns": fc_luns}


def body(info: Any = None, **top: Any) -> dict[str, Any]:
    return {"attachment_id": "a1", "connection_info": datera() if info is None else info,
            **top}


# ---- values ------------------------------------------------------------------------------

META = [  # shell and quoting characters, spaces
    ("semicolon", ";reboot"), ("pipe", "|sh"), ("and", "&&id"), ("subshell", "$(reboot)"),
    ("backticks", "`id`"), ("redirect", ">/etc/passwd"), ("quotes", "'\""),
    ("space option", " -o delete"), ("glob", "*"), ("brace", "${IFS}"), ("hash", "#x"),
    ("query", "?force=true"), ("percent", "%2e%2e"), ("backslash", "\\x00"),
]
CONTROL = [  # control and invisible characters
    ("newline", "\nnode.startup = automatic"), ("carriage return", "\r"), ("tab", "\t"),
    ("NUL", "\x00"), ("escape sequence", "\x1b]0;owned\x07"), ("DEL", "\x7f"),
    ("line separator", "\u2028"), ("bidi override", "\u202e"), ("zero width", "\u200b"),
    ("lone surrogate", "\ud800"),
]
NON_ASCII = [("fullwidth semicolon", "\uff1b"), ("arabic digit", "\u0663"),
             ("cyrillic a", "\u0430")]
WHOLE_DASH = [("option", "--login"), ("short option", "-o"), ("dash", "-")]
WHOLE_DOTS = [("dot", "."), ("dotdot", "..")]
WHOLE_PATH = [("traversal", "../../etc/passwd"), ("absolute path", "/etc/shadow"),
              ("proc", "/proc/self/environ")]
WRONG_TYPES: list[tuple[str, Any]] = [
    ("int", 1), ("float", 1.5), ("true", True), ("list", ["x"]), ("object", {"$ne": ""}),
]


@dataclass(frozen=True)
class TextField:
    """A string field: where it is, a valid value, what its grammar refuses."""

    name: str
    api_field: str
    put: Callable[[Any], dict[str, Any]]  # value -> request body
    valid: str
    max_len: int
    groups: tuple[str, ...] = ("meta", "control", "non_ascii", "dash", "dots", "path",
                               "empty", "types")
    suffix: bool = True  # also the valid value with each META/CONTROL value appended


def _in_data(shape: Callable[[], dict[str, Any]], key: str, index: int | None = None
             ) -> Callable[[Any], dict[str, Any]]:
    def put(value: Any) -> dict[str, Any]:
        info = copy.deepcopy(shape())
        data = info.get("data", info)
        if index is None:
            data[key] = value
        else:
            data[key][index] = value
        return body(info)
    return put


def _itmap_target(value: Any) -> dict[str, Any]:
    info = k2_fc()
    info["data"]["initiator_target_map"][I2] = [T1, value]
    return body(info)


def _itmap_initiator(value: Any) -> dict[str, Any]:
    info = k2_fc()
    info["data"]["initiator_target_map"] = {I1: [T1], value: [T2]} if isinstance(value, str) \
        else {I1: [T1]}
    return body(info)


def _top(key: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: body(**{key: value})


_CI = "connection_info."
TEXT_FIELDS = [
    TextField("iqn", _CI + "data.target_iqn", _in_data(k2, "target_iqn"), K2_IQN,
              MAX_IQN_BYTES),
    TextField("iqn in a list", _CI + "data.target_iqns[1]", _in_data(datera, "target_iqns", 1),
              IQN, MAX_IQN_BYTES),
    TextField("portal", _CI + "data.target_portal", _in_data(k2, "target_portal"), P1,
              MAX_PORTAL_LEN),
    TextField("portal in a list", _CI + "data.target_portals[0]",
              _in_data(datera, "target_portals", 0), P2, MAX_PORTAL_LEN),
    TextField("wwpn", _CI + "data.target_wwn[1]", _in_data(k2_fc, "target_wwn", 1), T2, 25),
    TextField("wwpn in target_wwns", _CI + "data.target_wwns[0]",
              _in_data(fc_luns, "target_wwns", 0), T1, 25),
    TextField("wwpn in the itmap", _CI + f"data.initiator_target_map.{I2}[1]", _itmap_target,
              T2, 25),
    TextField("initiator wwpn", _CI + "data.initiator_target_map", _itmap_initiator, I2, 25,
              groups=("meta", "control", "non_ascii", "dash", "dots", "path", "empty")),
    TextField("expected_wwn", _CI + "data.expected_wwn", _in_data(k2, "expected_wwn"),
              "36001405abc", 64, groups=("meta", "control", "non_ascii", "path", "empty",
                                          "types")),
    TextField("driver_volume_type", _CI + "driver_volume_type",
              lambda v: body({"driver_volume_type": v, "data": datera()["data"]}), "iscsi",
              16),
    TextField("addressing_mode", _CI + "data.addressing_mode",
              _in_data(k2_fc, "addressing_mode"), "SAM2", 16),
    TextField("chap username", _CI + "data.auth_username", _in_data(k2, "auth_username"),
              "alice", MAX_CHAP_LEN, groups=("control", "non_ascii", "empty", "types")),
    TextField("chap password", _CI + "data.auth_password", _in_data(k2, "auth_password"),
              "s3cret-chap-pass", MAX_CHAP_LEN, groups=("control", "non_ascii", "empty",
                                                         "types")),
    TextField("volume_id in data", _CI + "data.volume_id", _in_data(datera, "volume_id"),
              "vol-1", MAX_VOLUME_ID_LEN, groups=("control", "types")),
    TextField("fc volume_id in data", _CI + "data.volume_id", _in_data(k2_fc, "volume_id"),
              "vol-2", MAX_VOLUME_ID_LEN, groups=("control", "types")),
    TextField("attachment_id", "attachment_id", _top("attachment_id"), "a1", 128),
    TextField("volume_id", "volume_id", _top("volume_id"), "vol-1", 128),
]


def _values(f: TextField) -> list[tuple[str, Any]]:
    groups = {"meta": META, "control": CONTROL, "non_ascii": NON_ASCII, "dash": WHOLE_DASH,
              "dots": WHOLE_DOTS, "path": WHOLE_PATH, "empty": [("empty", "")],
              "types": WRONG_TYPES}
    values: list[tuple[str, Any]] = [v for g in f.groups for v in groups[g]]
    if f.suffix:
        values += [(f"valid + {n}", f.valid + v) for n, v in
                   (META if "meta" in f.groups else []) + CONTROL]
    values += [("over-long", f.valid + "a" * (f.max_len + 1 - len(f.valid))),
               ("huge", f.valid + "a" * HUGE)]
    return values


@dataclass(frozen=True)
class Case:
    """One hostile request: POST /v1/attachments with `body` (or `raw` bytes)."""

    name: str
    field: str
    body: Any = None
    raw: bytes | None = None
    # How hostagent-cli carries it: "info" (a --connection-info file: `cli_file`, by
    # default body["connection_info"] as JSON), "id" / "volume_id" / "timeout" (--id,
    # --volume-id, --timeout), None (the CLI cannot say it: it writes the body itself).
    cli: str | None = "info"
    cli_file: bytes | None = None
    cli_field: str | None = None  # when the CLI names it otherwise than the API

    def request(self) -> dict[str, Any]:
        """aiohttp client keyword arguments."""
        data = self.raw if self.raw is not None else json.dumps(self.body).encode()
        return {"data": data, "headers": {"Content-Type": "application/json"}}

    def file(self) -> bytes:
        if self.cli_file is not None:
            return self.cli_file
        return json.dumps(self.body["connection_info"]).encode()

    def value(self) -> Any:
        """The hostile value of an "id", "volume_id" or "timeout" case."""
        key = {"id": "attachment_id", "volume_id": "volume_id"}.get(self.cli or "")
        return self.body[key] if key else self.body["options"]["timeout"]


def text_cases() -> list[Case]:
    cases = []
    for f in TEXT_FIELDS:
        cli = "id" if f.name == "attachment_id" else "volume_id" if f.name == "volume_id" \
            else "info"
        for name, value in _values(f):
            cases.append(Case(f"{f.name}: {name}", f.api_field, f.put(value), cli=cli))
    return cases


# ---- numbers -----------------------------------------------------------------------------

OUT_OF_RANGE_LUNS: list[tuple[str, Any]] = [
    ("-1", -1), ("max+1", MAX_LUN + 1), ("2**31", 2**31), ("2**63", 2**63), ("2**64", 2**64),
    ("10**100", 10**100), ("-2**63", -(2**63)), ("float 1.0", 1.0), ("float 0.5", 0.5),
    ("1e308", 1e308), ("NaN", float("nan")), ("Infinity", float("inf")),
    ("-Infinity", float("-inf")), ("true", True), ("false", False), ("string", "0"),
    ("hex string", "0x1"), ("shell string", "1;reboot"), ("null", None), ("list", [0]),
    ("object", {"lun": 0}),
]
LUN_FIELDS: list[tuple[str, str, Callable[[Any], dict[str, Any]]]] = [
    ("iscsi target_lun", _CI + "data.target_lun", _in_data(k2, "target_lun")),
    ("iscsi target_luns", _CI + "data.target_luns[1]", _in_data(datera, "target_luns", 1)),
    ("fc target_lun", _CI + "data.target_lun", _in_data(k2_fc, "target_lun")),
    ("fc target_luns", _CI + "data.target_luns[0]", _in_data(fc_luns, "target_luns", 0)),
]
BAD_TIMEOUTS: list[tuple[str, Any]] = [
    ("0", 0), ("-1", -1), ("-0.0", -0.0), ("max+", MAX_TIMEOUT + 0.001), ("1e308", 1e308),
    ("2**1000", 2**1000), ("NaN", float("nan")), ("Infinity", float("inf")),
    ("-Infinity", float("-inf")), ("true", True), ("string", "10"), ("list", [10]),
    ("null", None),
]
BAD_MULTIPATH: list[tuple[str, Any]] = [
    ("string", "true"), ("1", 1), ("0", 0), ("null", None), ("list", [True]), ("yes", "yes"),
]


def number_cases() -> list[Case]:
    cases = [Case(f"{where}: {name}", fld, put(v))
             for where, fld, put in LUN_FIELDS for name, v in OUT_OF_RANGE_LUNS]
    cases += [Case(f"timeout: {name}", "options.timeout", body(options={"timeout": v}),
                   cli="timeout" if isinstance(v, int | float) and not isinstance(v, bool)
                   and v != 2**1000 else None)
              for name, v in BAD_TIMEOUTS]
    cases += [Case(f"multipath: {name}", "options.multipath", body(options={"multipath": v}),
                   cli=None) for name, v in BAD_MULTIPATH]
    return cases


# ---- structure: keys, nesting, size ------------------------------------------------------

def _dup(text: str, key: str) -> bytes:
    """The JSON text with its first `"key": <value>` written twice."""
    head, _, tail = text.partition(f'"{key}": ')
    assert tail, key
    value = json.dumps(_find(json.loads(text), key))
    return f'{head}"{key}": {value}, "{key}": {tail}'.encode()


def _find(doc: Any, key: str) -> Any:
    if isinstance(doc, dict):
        if key in doc:
            return doc[key]
        for v in doc.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None


def _arrays(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


def _objects(depth: int) -> bytes:
    return ('{"a": ' * depth + "1" + "}" * depth).encode()


def _wrapped(info: bytes) -> bytes:
    """A request body around a connection_info given as JSON text."""
    return b'{"attachment_id": "a1", "connection_info": ' + info + b"}"


def dup_in_info(name: str, info: dict[str, Any], key: str) -> Case:
    text = _dup(json.dumps(info), key)
    return Case(name, "body", raw=_wrapped(text), cli_file=text, cli_field="connection_info")


def whole(name: str, raw: bytes, cli_field: str = "connection_info") -> Case:
    """A body that is hostile as a whole; the CLI reads the same bytes as its file."""
    return Case(name, "body", raw=raw, cli_file=raw, cli_field=cli_field)


def structure_cases() -> list[Case]:
    valid = json.dumps(body())
    cases = [
        # duplicated keys, at every level (the CLI refuses them in its file itself)
        Case("duplicate attachment_id", "body", raw=_dup(valid, "attachment_id"), cli=None),
        Case("duplicate connection_info", "body", raw=_dup(valid, "connection_info"),
             cli=None),
        Case("duplicate options", "body", cli=None,
             raw=b'{"connection_info": {}, "options": {}, "options": {}}'),
        Case("duplicate option", "body", cli=None,
             raw=b'{"connection_info": {}, "options": {"timeout": 1, "timeout": 2}}'),
        dup_in_info("duplicate driver_volume_type", datera(), "driver_volume_type"),
        dup_in_info("duplicate data", datera(), "data"),
        dup_in_info("duplicate target_portals", datera(), "target_portals"),
        dup_in_info("duplicate target_luns", datera(), "target_luns"),
        dup_in_info("duplicate auth_password", k2(), "auth_password"),
        dup_in_info("duplicate target_lun (fc)", k2_fc(), "target_lun"),
        dup_in_info("duplicate initiator in the itmap", k2_fc(), I1),
        # unknown keys (connection_info's own extra keys are Cinder's and vendors': ignored)
        Case("unknown top-level key", "extra", body(extra=1), cli=None),
        Case("unknown key __proto__", "__proto__", body(__proto__={"admin": True}), cli=None),
        Case("unknown key constructor", "constructor", body(constructor=1), cli=None),
        Case("near-miss key", "attachment_id ", {**body(), "attachment_id ": "a2"}, cli=None),
        Case("case-changed key", "Connection_info", {**body(), "Connection_info": {}},
             cli=None),
        Case("over-long unknown key", "k" * 64, {**body(), "k" * 1000: 1}, cli=None),
        Case("unknown key with a newline", "x\ny", {**body(), "x\ny": 1}, cli=None),
        Case("unknown option", "options.fast", body(options={"fast": True}), cli=None),
        Case("unknown option __proto__", "options.__proto__", body(options={"__proto__": 1}),
             cli=None),
        Case("options not an object", "options", body(options=[1]), cli=None),
        Case("options a string", "options", body(options="multipath"), cli=None),
        # the shape of connection_info
        Case("connection_info missing", "connection_info", {"attachment_id": "a1"}, cli=None),
        Case("connection_info null", "connection_info", {"connection_info": None},
             cli_field="connection_info"),
        Case("connection_info a string", "connection_info", body("iscsi"),
             cli_field="connection_info"),
        Case("connection_info a list", "connection_info", body([datera()]),
             cli_field="connection_info"),
        Case("data not an object", _CI + "data",
             body({"driver_volume_type": "iscsi", "data": [P1]})),
        Case("data null", _CI + "data", body({"driver_volume_type": "iscsi", "data": None})),
        Case("data missing", _CI + "data", body({"driver_volume_type": "iscsi"})),
        Case("bare form with both protocols", _CI + "data",
             body({**datera()["data"], "target_wwn": T1})),
        Case("bare form with no target", _CI + "data", body({"volume_id": "v"})),
        Case("iscsi type with fc data", _CI + "data.target_portal",
             body({"driver_volume_type": "iscsi", "data": k2_fc()["data"]})),
        Case("fc type with iscsi data", _CI + "data.target_wwn",
             body({"driver_volume_type": "fibre_channel", "data": datera()["data"]})),
        Case("portal list a string", _CI + "data.target_portals",
             _in_data(datera, "target_portals")(P1)),
        Case("fewer iqns than portals", _CI + "data.target_iqns",
             _in_data(datera, "target_iqns")([IQN])),
        Case("itmap a list", _CI + "data.initiator_target_map",
             _in_data(k2_fc, "initiator_target_map")([I1])),
        Case("list nested in a list", _CI + "data.target_portals[0]",
             _in_data(datera, "target_portals", 0)([[[[P1]]]])),
        # deep JSON: the API refuses it past 32 levels; the CLI cannot even read the worst
        Case("arrays 33 deep", "body", raw=_wrapped(_arrays(33)), cli_file=_objects(33),
             cli_field="body"),
        Case("objects 33 deep", "body", raw=_wrapped(_objects(33)), cli_file=_objects(33),
             cli_field="body"),
        whole("arrays 100000 deep", _wrapped(_arrays(100_000))),
        whole("objects 100000 deep", _wrapped(_objects(100_000))),
        # huge JSON
        Case("over the body limit", "body", body(volume_id="v" * MAX_BODY), cli=None),
        Case("connection_info over the body limit", "body",
             body({**datera(), "padding": "x" * MAX_BODY}), cli_field="body"),
        Case("10000 portals", "body", _in_data(datera, "target_portals")([P1] * 10_000),
             cli_field="body"),
        Case("300 portals", _CI + "data.target_portals",
             body({"driver_volume_type": "iscsi", "data": {
                 "target_portals": [P1] * 300, "target_iqns": [IQN] * 300}})),
        Case("300 initiators", _CI + "data.initiator_target_map",
             _in_data(k2_fc, "initiator_target_map")(
                 {f"{i:016x}": [T1] for i in range(1, 301)})),
        whole("a 5000-digit LUN", _wrapped(
            b'{"target_portal": "127.0.0.1", "target_iqn": "' + K2_IQN.encode()
            + b'", "target_lun": ' + b"1" * 5000 + b"}")),
        # not a JSON object
        whole("not JSON", b"attach please"),
        whole("truncated JSON", valid[:-7].encode()),
        whole("trailing garbage", valid.encode() + b"; reboot"),
        whole("single quotes", valid.replace('"', "'").encode()),
        whole("invalid UTF-8", b'{"connection_info": "\xff\xfe"}'),
        whole("empty body", b""),
        whole("a JSON array", json.dumps([body()]).encode()),
        whole("a JSON string", b'"attach"'),
        whole("a JSON number", b"1"),
        whole("JSON null", b"null"),
        whole("JSON NaN", b"NaN"),
    ]
    return cases


def all_cases() -> list[Case]:
    return text_cases() + number_cases() + structure_cases()


CASES = all_cases()


# ---- the other routes: ids in the path, queries ------------------------------------------

def path_id(value: str) -> str:
    """Every byte percent-encoded: the value arrives as it is, whatever it holds."""
    return "".join(f"%{b:02X}" for b in value.encode("utf-8", "surrogatepass"))


BAD_IDS: list[tuple[str, str]] = [
    *META, *CONTROL, *NON_ASCII, *WHOLE_DASH, *WHOLE_DOTS, *WHOLE_PATH,
    *[(f"a1 + {n}", "a1" + v) for n, v in META + CONTROL],
    ("over-long", "a" * 129), ("huge", "a" * 4000),
]
ID_ROUTES = [("GET", "/v1/attachments/{}"), ("DELETE", "/v1/attachments/{}"),
             ("POST", "/v1/attachments/{}/extend")]


@dataclass(frozen=True)
class Query:
    name: str
    method: str
    path: str  # encoded
    field: str


def _q(value: str) -> str:
    return quote(value, safe="", errors="surrogatepass")


def query_cases() -> list[Query]:
    cases = [Query(f"{m} id: {n}", m, p.format(path_id(v)), "attachment_id")
             for m, p in ID_ROUTES for n, v in BAD_IDS]
    bad_flags = ["maybe", "true;reboot", "1\n", "\x00", "TRUE ", "2", "-1", "y", "on", "t", ""]
    cases += [Query(f"force={v!r}", "DELETE", f"/v1/attachments/a1?force={_q(v)}",
                    "query.force") for v in bad_flags]
    cases += [Query(f"fc={v!r}", "GET", f"/v1/preflight?fc={_q(v)}", "query.fc")
              for v in bad_flags]
    cases += [
        Query("bare force", "DELETE", "/v1/attachments/a1?force", "query.force"),
        Query("force twice", "DELETE", "/v1/attachments/a1?force=false&force=true",
              "query.force"),
        Query("fc twice", "GET", "/v1/preflight?fc=false&fc=true", "query.fc"),
        Query("unknown query on detach", "DELETE", "/v1/attachments/a1?purge=1", "query.purge"),
        Query("unknown query on list", "GET", "/v1/attachments?all=1", "query.all"),
        Query("unknown query on attach", "POST", "/v1/attachments?dry_run=1", "query.dry_run"),
        Query("unknown query on extend", "POST", "/v1/attachments/a1/extend?size=1",
              "query.size"),
        Query("unknown query on preflight", "GET", "/v1/preflight?verbose=1", "query.verbose"),
        Query("too many portals", "GET", "/v1/preflight?" + "&".join(
            f"portal=10.0.0.{i}" for i in range(MAX_PREFLIGHT_PORTALS + 1)), "query.portal"),
    ]
    portal_values = [(n, v) for n, v in _values(TEXT_FIELDS[2]) if isinstance(v, str)]
    cases += [Query(f"preflight portal: {n}", "GET",
                    f"/v1/preflight?portal=10.0.0.2&portal={_q(v)}", "query.portal[1]")
              for n, v in portal_values]
    return cases


QUERIES = query_cases()
PREFLIGHT_PORTALS = [(n, v) for n, v in _values(TEXT_FIELDS[2]) if isinstance(v, str)]
