"""Logging to stderr with the operation id of the request on every line."""

from __future__ import annotations

import contextvars
import logging
import sys

# Set per API request; tasks an operation starts inherit it with the context.
op_id: contextvars.ContextVar[str] = contextvars.ContextVar("op_id", default="-")

FORMAT = "%(asctime)s %(levelname)s op=%(op_id)s %(name)s: %(message)s"


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
