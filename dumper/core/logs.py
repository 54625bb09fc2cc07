"""Logging: JSON lines in a pod, readable text on a terminal, the current
table bound to every line through a context variable (one per asyncio task)."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from contextvars import ContextVar
from typing import Any, TextIO

import orjson

log = logging.getLogger("dumper")
current_table: ContextVar[str | None] = ContextVar("current_table", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """What a call's `extra=` added to a record (the fields a log line shows)."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class _TableFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "table"):
            record.table = current_table.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        doc.update({k: v for k, v in fields_of(record).items() if v is not None})
        if record.exc_info and record.levelno >= logging.ERROR:
            doc["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = fields_of(record)
        table = fields.pop("table", None)
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        prefix = f"{table}: " if table else ""
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        text = f"{level}{prefix}{record.getMessage()}" + (f" ({extra})" if extra else "")
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        return text


_LIBRARIES = "dumper-libraries"


class _LibraryFilter(logging.Filter):
    """Records of other libraries (asyncpg, botocore, apscheduler, asyncio) name
    their logger; their tracebacks are dropped, the error is what the run reports."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.logger = record.name
        record.exc_info = None
        record.exc_text = None
        return True


def setup(json_lines: bool, stream: TextIO = sys.stderr) -> None:
    # No line shows the caller's file, thread or process: the logging HOWTO's "Optimization"
    # settings skip collecting them, a quarter of a record's cost (a run logs per table).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    formatter = JsonFormatter() if json_lines else TextFormatter()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(_TableFilter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    # Libraries' warnings go through the same format, never as bare stderr lines.
    libraries = logging.StreamHandler(stream)
    libraries.setFormatter(formatter)
    libraries.addFilter(_LibraryFilter())
    libraries.setLevel(logging.WARNING)
    libraries.name = _LIBRARIES
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if h.name != _LIBRARIES] + [libraries]
    if root.level > logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)
