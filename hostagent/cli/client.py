"""A client of the agent's API over its Unix socket (used by hostagent-cli).

Standard library only (http.client over AF_UNIX), synchronous: a CLI call then
starts in a fraction of the time an aiohttp client takes to import, which counts
on a busy node and counts a lot in an emulated guest.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlencode

from hostagent.exitcodes import ExitCode


class ClientError(Exception):
    """An answer that is not a success, or no answer at all; `exit_code` for the CLI."""

    def __init__(self, message: str, exit_code: ExitCode, *, code: str = "client_error",
                 details: dict[str, Any] | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.code = code
        self.details = details or {}
        self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float | None) -> None:
        super().__init__("hostagent", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    """One connection per request. `timeout` bounds each socket operation; None
    waits as long as the operation runs (the agent bounds its operations itself)."""

    def __init__(self, socket_path: str, *, timeout: float | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def request(self, method: str, path: str, *, body: Any = None,
                query: dict[str, str] | None = None) -> tuple[int, Any]:
        conn = _UnixConnection(self.socket_path, self.timeout)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            try:
                conn.connect()
            except OSError as err:
                raise self._connect_error(err) from None
            try:
                conn.request(method, path + (f"?{urlencode(query)}" if query else ""),
                             body=json.dumps(body) if body is not None else None,
                             headers=headers)
                resp = conn.getresponse()
                status, text = resp.status, resp.read()
            except (OSError, http.client.HTTPException) as err:
                raise ClientError(
                    f"the agent closed the connection ({type(err).__name__}: {err}); it "
                    "finishes or undoes the operation when it runs again: see "
                    "'hostagent-cli list'", ExitCode.UNAVAILABLE,
                    code="agent_unavailable") from None
        finally:
            conn.close()
        return status, self._answer(status, text)

    @staticmethod
    def _answer(status: int, text: bytes) -> Any:
        try:
            data = json.loads(text) if text else None
        except ValueError:
            raise ClientError(f"the agent answered {status} with no JSON", ExitCode.FAILED,
                              status=status) from None
        if status >= 400:
            error = (data or {}).get("error") or {}
            raise ClientError(error.get("message", f"HTTP {status}"),
                              ExitCode.for_status(status), code=error.get("code", "http_error"),
                              details=error.get("details") or {}, status=status)
        return data

    def _connect_error(self, err: OSError) -> ClientError:
        if isinstance(err, PermissionError):
            return ClientError(
                f"not allowed to use the agent's socket {self.socket_path}: run as root or "
                "as a member of the socket's group (socket_group in hostagent.conf)",
                ExitCode.FORBIDDEN, code="forbidden")
        return ClientError(
            f"the agent is not running (no answer on {self.socket_path}: "
            f"{err.strerror or err}); start it with 'systemctl start hostagent' or "
            "'hostagent serve'", ExitCode.UNAVAILABLE, code="agent_unavailable")
