"""Named exit statuses of hostagent and hostagent-cli, one per error class."""

from __future__ import annotations

from enum import IntEnum

from hostagent.errors import HostAgentError


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # an internal error
    USAGE = 2  # bad command line (argparse's own status)
    INVALID = 3  # the request was refused as invalid (HTTP 400); nothing ran
    NOT_FOUND = 4  # no such attachment (404)
    CONFLICT = 5  # conflicting request, operation in progress, device busy, paths down (409)
    HOST = 6  # a host command or the array failed (502)
    TIMEOUT = 7  # a host command or a device wait timed out (504)
    GONE = 8  # the device of an attachment vanished (410)
    UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: the daemon is not running
    FORBIDDEN = 77  # sysexits EX_NOPERM: not allowed on the socket, or not root
    CONFIG = 78  # sysexits EX_CONFIG: the configuration file is wrong

    @classmethod
    def for_status(cls, http_status: int) -> ExitCode:
        return _BY_STATUS.get(http_status, cls.FAILED)

    @classmethod
    def for_error(cls, err: HostAgentError) -> ExitCode:
        return cls.for_status(err.http_status)


class CheckExit(IntEnum):
    """hostagent-cli preflight and multipath check: the worst status found."""

    PASS = 0
    WARN = 1
    FAIL = 2


class HealthExit(IntEnum):
    """hostagent-cli health: the worst verdict of the attached volumes."""

    HEALTHY = 0
    DEGRADED = 1
    FAILED = 2


_BY_STATUS = {400: ExitCode.INVALID, 403: ExitCode.FORBIDDEN, 404: ExitCode.NOT_FOUND,
              409: ExitCode.CONFLICT, 410: ExitCode.GONE,
              502: ExitCode.HOST, 504: ExitCode.TIMEOUT}
