"""The API's OpenAPI 3.0 description, served at GET /v1/openapi.json.

api.py validates requests against the field lists defined here, and a unit test
checks that the routes the app serves and the paths described are the same.
"""

from __future__ import annotations

from typing import Any

from hostagent.connection_info import MAX_PORTAL_LEN

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
MAX_TIMEOUT = 3600

ATTACH_FIELDS = ("attachment_id", "volume_id", "connection_info", "options")
OPTION_FIELDS = ("multipath", "timeout")
DETACH_QUERY = ("force",)
PREFLIGHT_QUERY = ("portal", "fc")
MAX_PREFLIGHT_PORTALS = 16

_ERROR = {"$ref": "#/components/schemas/Error"}


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {400: "invalid request (details.field names the field)", 403: "peer not allowed",
            404: "no such attachment", 409: "conflicting request or operation in progress",
            502: "a host command failed", 504: "a host command or device wait timed out",
            500: "internal error"}
    return {str(s): _answer(text[s], _ERROR) for s in statuses}


_ATTACHMENT = {"$ref": "#/components/schemas/Attachment"}
_ID_PARAM = {"name": "attachment_id", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": ID_PATTERN}}
_COMMON = (400, 403, 500)

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "hostagent", "version": "1",
             "description": "Attach SAN volumes (iSCSI, FC) to this host from Cinder's "
                            "connection_info. Served on a Unix socket only."},
    "paths": {
        "/v1/attachments": {
            "get": {"operationId": "listAttachments",
                    "responses": {"200": _answer("attachments not detached", {
                        "type": "object", "required": ["attachments"],
                        "properties": {"attachments": {"type": "array", "items": _ATTACHMENT}}}),
                        **_errors(*_COMMON)}},
            "post": {
                "operationId": "attach",
                "description": "Attach a volume and answer when it is attached. The same "
                               "attachment_id with the same body again answers 200 with the "
                               "existing attachment (a retry is safe); another body under the "
                               "same id answers 409.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/AttachRequest"}}}},
                "responses": {"201": _answer("attached", _ATTACHMENT),
                              "200": _answer("already attached by an earlier request",
                                             _ATTACHMENT),
                              **_errors(*_COMMON, 409, 502, 504)}},
        },
        "/v1/attachments/{attachment_id}": {
            "parameters": [_ID_PARAM],
            "get": {"operationId": "getAttachment",
                    "responses": {"200": _answer("the attachment; `phase` tells the step of a "
                                                 "running operation", _ATTACHMENT),
                                  **_errors(*_COMMON, 404)}},
            "delete": {
                "operationId": "detach",
                "description": "Detach and answer 200 with the attachment in status "
                               "`detached`. Retrying a finished detach answers the same 200 "
                               "(a detached attachment is remembered for detached_retention "
                               "seconds, then 404).",
                "parameters": [{"name": "force", "in": "query", "required": False,
                                "schema": {"type": "boolean", "default": False},
                                "description": "go on past a failed flush or a busy map "
                                               "(data may be lost; last_error says so)"}],
                "responses": {"200": _answer("detached", _ATTACHMENT),
                              **_errors(*_COMMON, 404, 409, 502, 504)}},
        },
        "/v1/attachments/{attachment_id}/extend": {
            "parameters": [_ID_PARAM],
            "post": {"operationId": "extend",
                     "description": "Rescan every path and resize the map after the volume "
                                    "grew on the array; device.size_bytes is the new size.",
                     "responses": {"200": _answer("resized", _ATTACHMENT),
                                   **_errors(*_COMMON, 404, 409, 502, 504)}},
        },
        "/v1/connector": {
            "get": {"operationId": "connector",
                    "responses": {"200": _answer("os-brick's connector properties",
                                                 {"type": "object"}), **_errors(*_COMMON)}},
        },
        "/v1/preflight": {
            "get": {"operationId": "preflight",
                    "description": "Check the node's prerequisites, as `hostagent-cli "
                                   "preflight` does. Always 200: `status` is the worst check "
                                   "(pass, warn, fail); each failing check has a remedy.",
                    "parameters": [
                        {"name": "portal", "in": "query", "required": False,
                         "description": "ip[:port] of an array portal to reach; repeat it",
                         "style": "form", "explode": True,
                         "schema": {"type": "array", "maxItems": MAX_PREFLIGHT_PORTALS,
                                    "items": {"type": "string", "minLength": 1,
                                              "maxLength": MAX_PORTAL_LEN}}},
                        {"name": "fc", "in": "query", "required": False,
                         "schema": {"type": "boolean"}}],
                    "responses": {"200": _answer("the checks", {
                        "$ref": "#/components/schemas/Preflight"}), **_errors(*_COMMON)}},
        },
        "/v1/health": {
            "get": {"operationId": "health",
                    "description": "Check every attached volume now: expected against present "
                                   "paths, session, connection, disk, multipathd and FC port "
                                   "states, the map, sizes, an optional read probe. Always "
                                   "200: `status` is the worst verdict (healthy, degraded, "
                                   "failed). Repairs are made by the periodic check only.",
                    "responses": {"200": _answer("the verdicts", {
                        "$ref": "#/components/schemas/Health"}), **_errors(*_COMMON, 404)}},
        },
        "/metrics": {
            "get": {"operationId": "metrics",
                    "description": "Prometheus text exposition: attachments and paths by "
                                   "state, operation latency, host commands, self-heal "
                                   "actions, preflight results.",
                    "responses": {"200": {"description": "metrics", "content": {
                        "text/plain": {"schema": {"type": "string"}}}},
                        **_errors(403, 404, 500)}},
        },
        "/v1/openapi.json": {
            "get": {"operationId": "openapi",
                    "responses": {"200": _answer("this document", {"type": "object"}),
                                  **_errors(403, 500)}},
        },
    },
    "components": {"schemas": {
        "AttachRequest": {
            "type": "object", "additionalProperties": False, "required": ["connection_info"],
            "properties": {
                "attachment_id": {"type": "string", "pattern": ID_PATTERN,
                                  "description": "chosen by the caller to make retries safe; "
                                                 "a new UUID when absent"},
                "volume_id": {"type": "string", "pattern": ID_PATTERN},
                "connection_info": {"type": "object", "description": "Cinder's, wrapped "
                                    "({driver_volume_type, data}) or the bare data dict"},
                "options": {"type": "object", "additionalProperties": False, "properties": {
                    "multipath": {"type": "boolean"},
                    "timeout": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                                "maximum": MAX_TIMEOUT}}},
            }},
        "Path": {"type": "object", "properties": {
            "device": {"type": "string"}, "hctl": {"type": "string"},
            "portal": {"type": "string", "nullable": True},
            "target": {"type": "string", "nullable": True}}},
        "Device": {"type": "object", "nullable": True, "properties": {
            "path": {"type": "string", "nullable": True,
                     "description": "the dm-N or sdX node as verified since the agent "
                                    "started; null while the volume is restoring or after "
                                    "it vanished (the kernel gives the name to others)"},
            "wwn": {"type": "string"},
            "multipath": {"type": "boolean"}, "size_bytes": {"type": "integer"},
            "missing": {"type": "array", "items": {"type": "string"}},
            "paths": {"type": "array", "items": {"$ref": "#/components/schemas/Path"}},
            "iscsi_targets": {"type": "array", "items": {"type": "object"}},
            "stable_path": {"type": "string", "nullable": True,
                            "description": "a name no other device gets (a map's by-id "
                                           "link dm-uuid-mpath-<wwid>)"},
            "read_only": {"type": "boolean",
                          "description": "access_mode ro: the map and its disks are "
                                         "read-only (writes fail with EPERM)"},
            "encrypted": {"type": "boolean",
                          "description": "the controller's encrypted flag: the device "
                                         "holds ciphertext, which the consumer opens"},
            "discovered_from": {"type": "string", "nullable": True,
                                "description": "the portal whose SendTargets listed the "
                                               "other portals (one portal was given)"}}},
        "Attachment": {"type": "object", "required": ["id", "status"], "properties": {
            "id": {"type": "string"}, "volume_id": {"type": "string", "nullable": True},
            "protocol": {"type": "string", "enum": ["iscsi", "fibre_channel"]},
            "status": {"type": "string",
                       "enum": ["attaching", "attached", "detaching", "failed", "detached"]},
            "phase": {"type": "string", "nullable": True},
            "multipath": {"type": "boolean"},
            "device": {"$ref": "#/components/schemas/Device"},
            "connection_info": {"type": "object", "description": "secrets shown as ***"},
            "last_error": {"type": "object", "nullable": True},
            "created_at": {"type": "number"}, "updated_at": {"type": "number"}}},
        "Preflight": {"type": "object", "required": ["status", "checks"], "properties": {
            "status": {"type": "string", "enum": ["pass", "warn", "fail"]},
            "checks": {"type": "array", "items": {
                "type": "object", "required": ["id", "status", "detail"], "properties": {
                    "id": {"type": "string"},
                    "status": {"type": "string", "enum": ["pass", "warn", "fail"]},
                    "detail": {"type": "string"}, "remedy": {"type": "string"},
                    "packages": {"type": "object",
                                 "additionalProperties": {"type": "string"}}}}}}},
        "Health": {"type": "object", "required": ["status", "attachments"], "properties": {
            "status": {"type": "string", "enum": ["healthy", "degraded", "failed"]},
            "checked_at": {"type": "number"},
            "attachments": {"type": "array", "items": {
                "type": "object", "required": ["id", "status", "reasons", "paths"],
                "properties": {
                    "id": {"type": "string"}, "volume_id": {"type": "string", "nullable": True},
                    "protocol": {"type": "string"}, "device": {"type": "string"},
                    "wwn": {"type": "string"},
                    "status": {"type": "string", "enum": ["healthy", "degraded", "failed"]},
                    "reasons": {"type": "array", "items": {"type": "string"}},
                    "paths_up": {"type": "integer"}, "paths_expected": {"type": "integer"},
                    "paths": {"type": "array", "items": {"type": "object", "properties": {
                        "path": {"type": "string"},
                        "state": {"type": "string", "enum": ["up", "down", "missing"]},
                        "problems": {"type": "array", "items": {"type": "string"}}}}},
                    "map": {"type": "object"}, "remote_ports": {"type": "array",
                                                               "items": {"type": "object"}},
                    "probe": {"type": "object", "nullable": True},
                    "history": {"type": "array", "items": {"type": "object"}}}}},
            "self_heal": {"type": "object", "properties": {
                "enabled": {"type": "boolean"},
                "actions": {"type": "array", "items": {"type": "object"}}}},
            "history": {"type": "array", "items": {"type": "object", "properties": {
                "at": {"type": "number"}, "attachment_id": {"type": "string"},
                "from": {"type": "string"}, "to": {"type": "string"},
                "reasons": {"type": "array", "items": {"type": "string"}}}}}}},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message", "details"], "properties": {
                "code": {"type": "string"}, "message": {"type": "string"},
                "details": {"type": "object"}}}}},
    }},
}
