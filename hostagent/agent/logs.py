"""Logging to stderr with the operation id of the request on every line."""

from __future__ import annotations

import contextvars
import logging
import sys

# Set per API request; tasks an operation starts inherit it with the context.
op_id: contextvars.ContextVar[str] = contextvars.ContextVar("op_id", default="-")

FORMAT = "%(asctime)s %(levelname)s op=%(op_id)s %(name)s: %(message)s"
# Libraries whose DEBUG is a dump of their protocol (pyroute2 logs every netlink
# message): hostagent's DEBUG is about hostagent, theirs stays at WARNING.
QUIET = ("pyroute2", "os_brick", "oslo_concurrency", "oslo.privsep.daemon", "urllib3")


class _OpIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.op_id = op_id.get()
        return True


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_OpIdFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
