"""The HTTP API (v1, JSON) on a Unix socket: aiohttp app, routes, validation, errors.

Every request is checked before anything reaches the service: unknown fields,
wrong types, duplicate keys, over-deep or oversized bodies answer 400 naming
the field. Errors always have the shape {"error": {"code", "message", "details"}}.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from hostagent.agent.logs import op_id
from hostagent.agent.metrics import Metrics
from hostagent.agent.service import AttachRequest, Service
from hostagent.api import openapi
from hostagent.api.peer import PeerCheck
from hostagent.connection_info import parse, parse_portal
from hostagent.errors import HostAgentError, InvalidRequest, NotFound
from hostagent.health import HealthMonitor, report_to_dict
from hostagent.models import attachment_to_dict
from hostagent.node.preflight import Options, Preflight, report

log = logging.getLogger("hostagent.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ID_RE = re.compile(openapi.ID_PATTERN)
_MAX_DEPTH = 32
# The longest request line the document allows: GET /v1/preflight with 16 portals of
# 261 characters, each UTF-8 character percent-encoded (12 bytes). aiohttp's default
# (8190) refused such a query with a plain-text 400, before the error middleware.
_MAX_REQUEST_LINE = 64 * 1024
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


# ---- request parsing ------------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidRequest("body", f"duplicate key {key[:64]!r}")
        result[key] = value
    return result


def _depth(value: Any, limit: int) -> int:
    if limit < 0:
        raise InvalidRequest("body", f"JSON nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, dict):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as err:
        raise InvalidRequest("body", f"larger than {request.app[MAX_BODY]} bytes") from err
    try:
        body = json.loads(raw, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise InvalidRequest("body", f"JSON nested deeper than {_MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, ValueError) as err:
        if isinstance(err, InvalidRequest):
            raise
        raise InvalidRequest("body", f"not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body", "must be a JSON object")
    _depth(body, _MAX_DEPTH)
    return body


def _unknown(obj: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise InvalidRequest(f"{where}{key[:64]}", f"unknown field (allowed: "
                                                         f"{', '.join(allowed)})")


def _identifier(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise InvalidRequest(field, "must be 1-128 letters, digits and . _ : - "
                                    "starting with a letter or digit")
    return value


def attach_request(body: Mapping[str, Any], service: Service) -> AttachRequest:
    _unknown(body, openapi.ATTACH_FIELDS, "")
    if "connection_info" not in body:
        raise InvalidRequest("connection_info", "is required")
    att_id = _identifier(body["attachment_id"], "attachment_id") \
        if body.get("attachment_id") is not None else str(uuid.uuid4())
    volume_id = body.get("volume_id")
    if volume_id is not None:
        volume_id = _identifier(volume_id, "volume_id")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidRequest("options", "must be an object")
    _unknown(options, openapi.OPTION_FIELDS, "options.")
    multipath = options.get("multipath", service.multipath)
    if not isinstance(multipath, bool):
        raise InvalidRequest("options.multipath", "must be true or false")
    timeout = options.get("timeout", service.attach_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not 0 < timeout <= openapi.MAX_TIMEOUT:
        raise InvalidRequest("options.timeout", f"must be a number of seconds in "
                                                f"(0, {openapi.MAX_TIMEOUT}]")
    info = body["connection_info"]
    try:
        spec = parse(info)
    except InvalidRequest as err:
        field = err.field if err.field.startswith("connection_info") else \
            f"connection_info.{err.field}"
        raise InvalidRequest(field, err.reason) from None
    return AttachRequest(att_id, info, spec, volume_id or spec.volume_id, multipath,
                         float(timeout))


def _query(request: web.Request, allowed: tuple[str, ...]) -> None:
    _unknown(request.query, allowed, "query.")


def _flag(request: web.Request, name: str) -> bool:
    values = request.query.getall(name, [])
    if len(values) > 1:  # ?force=false&force=true: which one?
        raise InvalidRequest(f"query.{name}", "given more than once")
    if not values:
        return False
    value = values[0].lower()  # a bare ?force is no answer: refused, not taken for false
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidRequest(f"query.{name}", "must be true or false")


# ---- handlers -----------------------------------------------------------------------

def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _service(request: web.Request) -> Service:
    return request.app[SERVICE]


def _attachment_id(request: web.Request) -> str:
    return _identifier(request.match_info["attachment_id"], "attachment_id")


async def list_attachments(request: web.Request) -> web.Response:
    _query(request, ())
    return _json({"attachments": [attachment_to_dict(a) for a in _service(request).list()]})


async def attach(request: web.Request) -> web.Response:
    _query(request, ())
    service = _service(request)
    req = attach_request(await _json_body(request), service)
    att, created = await service.attach(req)
    return _json(attachment_to_dict(att), 201 if created else 200)


async def get_attachment(request: web.Request) -> web.Response:
    _query(request, ())
    return _json(attachment_to_dict(_service(request).get(_attachment_id(request))))


async def detach(request: web.Request) -> web.Response:
    _query(request, openapi.DETACH_QUERY)
    att = await _service(request).detach(_attachment_id(request), force=_flag(request, "force"))
    return _json(attachment_to_dict(att))


async def extend(request: web.Request) -> web.Response:
    _query(request, ())
    return _json(attachment_to_dict(await _service(request).extend(_attachment_id(request))))


async def connector(request: web.Request) -> web.Response:
    _query(request, ())
    return _json(_service(request).connector_properties())


async def preflight(request: web.Request) -> web.Response:
    _query(request, openapi.PREFLIGHT_QUERY)
    values = request.query.getall("portal", [])
    if len(values) > openapi.MAX_PREFLIGHT_PORTALS:
        raise InvalidRequest("query.portal", f"at most {openapi.MAX_PREFLIGHT_PORTALS} portals")
    portals = tuple(parse_portal(v, f"query.portal[{i}]") for i, v in enumerate(values))
    checks = await request.app[PREFLIGHT].run(Options(portals, _flag(request, "fc")))
    return _json(report(checks))


async def health(request: web.Request) -> web.Response:
    """A fresh check of every attached volume (no repair: that is the periodic loop's)."""
    _query(request, ())
    monitor = request.app[HEALTH]
    if monitor is None:
        raise NotFound("health checks are not enabled in this agent")
    return _json(report_to_dict(await monitor.check()))


async def metrics(request: web.Request) -> web.Response:
    _query(request, ())
    registry = request.app[METRICS]
    if registry is None:
        raise NotFound("metrics are not enabled in this agent")
    body, content_type = registry.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def spec(request: web.Request) -> web.Response:
    return _json(openapi.SPEC)


# ---- middleware -----------------------------------------------------------------------

def error_response(err: HostAgentError) -> web.Response:
    return _json({"error": err.to_dict()}, err.http_status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = op_id.set(request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex[:12])
    try:
        peer_check = request.app[PEER_CHECK]
        if peer_check is not None:
            peer_check.check(request)
        return await handler(request)
    except HostAgentError as err:
        if err.http_status >= 500:
            log.error("%s %s: %s", request.method, request.path, err.message)
        return error_response(err)
    except web.HTTPException as exc:  # aiohttp's own: no route, wrong method
        if exc.status == 404:
            return error_response(NotFound(f"no route {request.method} {request.path}"))
        code = "method_not_allowed" if exc.status == 405 else "http_error"
        answer = _json({"error": {"code": code, "message": exc.reason, "details": {}}},
                       exc.status)
        if "Allow" in exc.headers:  # a 405 must say which methods the path has (RFC 9110)
            answer.headers["Allow"] = exc.headers["Allow"]
        return answer
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _json({"error": {"code": "internal_error", "details": {},
                                "message": "internal error; the agent's log has the trace"}},
                     500)
    finally:
        op_id.reset(token)


SERVICE = web.AppKey("service", Service)
PEER_CHECK = web.AppKey[PeerCheck | None]("peer_check")
MAX_BODY = web.AppKey("max_body", int)
PREFLIGHT = web.AppKey("preflight", Preflight)
HEALTH = web.AppKey[HealthMonitor | None]("health")
METRICS = web.AppKey[Metrics | None]("metrics")

ROUTES = (
    ("GET", "/v1/attachments", list_attachments),
    ("POST", "/v1/attachments", attach),
    ("GET", "/v1/attachments/{attachment_id}", get_attachment),
    ("DELETE", "/v1/attachments/{attachment_id}", detach),
    ("POST", "/v1/attachments/{attachment_id}/extend", extend),
    ("GET", "/v1/connector", connector),
    ("GET", "/v1/preflight", preflight),
    ("GET", "/v1/health", health),
    ("GET", "/metrics", metrics),
    ("GET", "/v1/openapi.json", spec),
)


def make_app(service: Service, *, peer_check: PeerCheck | None, preflight: Preflight,
             max_body_bytes: int = 64 * 1024, health: HealthMonitor | None = None,
             metrics: Metrics | None = None) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=max_body_bytes,
                          handler_args={"max_line_size": _MAX_REQUEST_LINE})
    app[SERVICE] = service
    app[PEER_CHECK] = peer_check
    app[MAX_BODY] = max_body_bytes
    app[PREFLIGHT] = preflight
    app[HEALTH] = health
    app[METRICS] = metrics
    for method, path, handler in ROUTES:
        # aiohttp's default segment pattern leaves out '{' and '}': an id holding one
        # answered 404 "no route" instead of 400 naming attachment_id.
        app.router.add_route(method, path.replace("{attachment_id}",
                                                  "{attachment_id:[^/]+}"), handler)
    return app
