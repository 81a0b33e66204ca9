"""One error tree. Each error has a stable code, an HTTP status and a retryable flag.

No function returns None for a failure and no caller matches error strings:
callers catch a class, the API and CLI map `code` and `http_status`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class HostAgentError(Exception):
    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}


class InvalidRequest(HostAgentError):
    """Bad input; `details["field"]` names the field. Nothing ran on the host."""

    code = "invalid_request"
    http_status = 400

    def __init__(self, field: str, message: str, **details: Any) -> None:
        super().__init__(f"{field}: {message}", field=field, **details)
        self.field = field
        self.reason = message  # without the field, for whoever names the field anew


class NotFound(HostAgentError):
    code = "not_found"
    http_status = 404


class Conflict(HostAgentError):
    code = "conflict"
    http_status = 409


class AgentRunning(Conflict):
    """Another agent already serves this state directory."""

    code = "agent_running"


class HostCommandError(HostAgentError):
    """A host command or host interface failed."""

    code = "host_command_failed"
    http_status = 502


def _tail(text: str, limit: int = 500) -> str:
    """The last lines of `text` within `limit` characters: a tool's retries can fill
    its stderr, and a message must not begin mid-word."""
    text = text.strip()
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    return "... " + (tail.split("\n", 1)[1] if "\n" in tail else tail)


class CommandFailed(HostCommandError):
    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        super().__init__(
            f"{argv[0]} exited with {returncode}: {_tail(stderr)}",
            argv=argv, returncode=returncode,
        )
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class CommandTimeout(HostCommandError):
    code = "host_command_timeout"
    http_status = 504
    retryable = True

    def __init__(self, argv: list[str], timeout: float) -> None:
        super().__init__(f"{argv[0]} did not finish within {timeout:g} s", argv=argv,
                         timeout=timeout)
        self.argv = argv


class CommandNotFound(HostCommandError):
    code = "host_command_not_found"

    def __init__(self, program: str) -> None:
        super().__init__(f"{program} is not installed or not on PATH", program=program)


class DaemonUnavailable(HostCommandError):
    """A host daemon (iscsid, multipathd) does not answer."""

    code = "daemon_unavailable"
    retryable = True


class AuthenticationFailed(HostAgentError):
    """The target refused our CHAP credentials, or failed to prove its own."""

    code = "authentication_failed"
    http_status = 502


class LoginFailed(HostAgentError):
    """No portal of the volume could be logged in to."""

    code = "login_failed"
    http_status = 502
    retryable = True


class PortalUnreachable(LoginFailed):
    """The portal refused or dropped the connection, or did not answer in time."""

    code = "portal_unreachable"


class PortalResting(LoginFailed):
    """A portal that just failed is not tried again before its retry interval."""

    code = "portal_resting"


class DeviceTimeout(HostAgentError):
    """A device the kernel should have created did not appear in time."""

    code = "device_timeout"
    http_status = 504
    retryable = True


class WwnMismatch(HostAgentError):
    """Paths disagree on the WWN, or it differs from the expected one."""

    code = "wwn_mismatch"
    http_status = 502


class WwidInUse(Conflict):
    """A new device reports the WWID of another live attachment's volume."""

    code = "wwid_in_use"


class DeviceBusy(HostAgentError):
    """A map or device is in use and cannot be flushed or removed."""

    code = "device_busy"
    http_status = 409
    retryable = True


class MultipathRequired(HostAgentError):
    """The controller enforces multipath (enforce_multipath) and this attach cannot
    get a map: the agent is single-path, or multipathd does not answer."""

    code = "multipath_required"
    http_status = 409


class PathsDown(HostAgentError):
    """An operation that needs every path (extend) found some down."""

    code = "paths_down"
    http_status = 409
    retryable = True


class LunNotFound(HostAgentError):
    """The target answered but has no such LUN for us (not mapped, wrong id)."""

    code = "lun_not_found"
    http_status = 502


class NoPath(HostAgentError):
    """No port of this host reaches the volume (FC: no online HBA sees a target)."""

    code = "no_path"
    http_status = 502
    retryable = True


class Forbidden(HostAgentError):
    """The peer on the agent's socket is not on the allow-list."""

    code = "forbidden"
    http_status = 403


class OperationInProgress(Conflict):
    """Another operation on the same attachment is still running."""

    code = "operation_in_progress"
    retryable = True


class InvalidConfig(HostAgentError):
    """The configuration file is wrong; `details["option"]` names the option."""

    code = "invalid_config"

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}", option=option)
        self.option = option


class DeviceVanished(HostAgentError):
    """An attached volume's device is no longer on the host."""

    code = "device_vanished"
    http_status = 410
