"""A client of the agent's API over its Unix socket (used by hostagent-cli)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

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


class Client:
    def __init__(self, socket_path: str, *, timeout: float | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.socket_path),
            timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, *, body: Any = None,
                      query: dict[str, str] | None = None) -> tuple[int, Any]:
        assert self._session is not None, "use the client as an async context manager"
        try:
            async with self._session.request(method, f"http://hostagent{path}", params=query,
                                             json=body) as resp:
                text = await resp.text()
                status = resp.status
        except aiohttp.ClientConnectorError as err:
            raise self._connect_error(err) from None
        except aiohttp.ClientError as err:
            raise ClientError(f"the agent closed the connection ({err}); it finishes or "
                              "undoes the operation when it runs again: see 'hostagent-cli "
                              "list'", ExitCode.UNAVAILABLE, code="agent_unavailable") from None
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
        return status, data

    def _connect_error(self, err: aiohttp.ClientConnectorError) -> ClientError:
        cause = err.os_error
        if isinstance(cause, PermissionError):
            return ClientError(
                f"not allowed to use the agent's socket {self.socket_path}: run as root or "
                "as a member of the socket's group (socket_group in hostagent.conf)",
                ExitCode.FORBIDDEN, code="forbidden")
        return ClientError(
            f"the agent is not running (no answer on {self.socket_path}: "
            f"{cause.strerror or cause}); start it with 'systemctl start hostagent' or "
            "'hostagent serve'", ExitCode.UNAVAILABLE, code="agent_unavailable")
