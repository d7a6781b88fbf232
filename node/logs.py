"""Structured logging: one line per event, ``time level logger event key=value ...``.

Only UIDs, AE titles, addresses, counts and states go into fields at INFO level, never
patient names or IDs, so node logs can be shipped to a central log store.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_FIELDS = "lge_fields"


class EventFormatter(logging.Formatter):
    def __init__(self, as_json: bool = False) -> None:
        super().__init__()
        self.as_json = as_json

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = time.gmtime(record.created)
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        if self.as_json:
            doc = {
                "time": self.formatTime(record),
                "level": record.levelname,
                "logger": record.name,
                "event": record.getMessage(),
                **fields,
            }
            if record.exc_info:
                doc["exception"] = self.formatException(record.exc_info)
            return json.dumps(doc, default=str)
        parts = [self.formatTime(record), record.levelname, record.name, record.getMessage()]
        parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += " exception=" + _quote(self.formatException(record.exc_info))
        return line


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` as one structured line."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={_FIELDS: fields}, stacklevel=2)


def configure(level: str = "INFO", as_json: bool = False) -> None:
    """Route the node's and pynetdicom's logs to stderr, one structured line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter(as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU at INFO; its association events are logged by us instead.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # apscheduler warns when a wake-up finds a round still running: expected here.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.getLogger("highdicom").setLevel(logging.WARNING)
