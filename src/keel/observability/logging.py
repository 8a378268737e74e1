"""Structured logging: one pipeline for Keel's own lines and every stdlib logger (uvicorn, alembic).

A terminal gets a readable console format; anything else gets one JSON object per line. An
optional file receives JSON lines and is rotated by size. Every line written while a request or
job runs carries its `trace_id`, `span_id` and `parent_span_id`. Never log secrets or bodies.

Keel's lines are structlog events handed to the stdlib handlers as dicts; one formatter per
handler renders them (and plain stdlib records) without copying records, because the request
line is written on every request.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import IO, Any

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from keel.core.config import Config
from keel.core.context import current_trace

__all__ = ["add_trace_ids", "configure_logging", "get_logger"]

_HANDLER_MARK = "_keel_handler"
_STRUCTLOG_MARK = "_keel_event"
# Attributes every LogRecord has; anything else on a stdlib record was passed as `extra`.
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# uvicorn attaches an ANSI-coloured duplicate of its message as an extra.
_DROPPED_EXTRAS = frozenset({"color_message", _STRUCTLOG_MARK})


def add_trace_ids(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Add the current trace position to a log event (if one is running)."""
    trace = current_trace()
    if trace is not None:
        event_dict.setdefault("trace_id", trace.trace_id)
        event_dict.setdefault("span_id", trace.span_id)
        event_dict.setdefault("parent_span_id", trace.parent_span_id)
    return event_dict


class _Timestamp:
    """ISO 8601 UTC timestamps with microseconds; the date part is formatted once a second."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def format(self, now: float) -> str:
        second = int(now)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.prefix}.{int((now - second) * 1_000_000):06d}Z"

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        event_dict["timestamp"] = self.format(time.time())
        return event_dict


def _to_stdlib(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> Any:
    """Hand the event dict to the stdlib logger as the record's message."""
    return (event_dict,), {"extra": {_STRUCTLOG_MARK: True}}


class _EventFormatter(logging.Formatter):
    """Render structlog events and plain stdlib records with one renderer."""

    def __init__(self, renderer: Processor, timestamp: _Timestamp) -> None:
        super().__init__()
        self.renderer = renderer
        self.timestamp = timestamp

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, _STRUCTLOG_MARK, False) and isinstance(record.msg, dict):
            event: EventDict = dict(record.msg)
        else:
            event = self._foreign(record)
        rendered = self.renderer(None, record.levelname.lower(), event)
        return rendered if isinstance(rendered, str) else str(rendered)

    def _foreign(self, record: logging.LogRecord) -> EventDict:
        event: EventDict = {
            "event": record.getMessage(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "timestamp": self.timestamp.format(record.created),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in _DROPPED_EXTRAS:
                event.setdefault(key, value)
        if record.exc_info:
            event["exc_info"] = record.exc_info
        return add_trace_ids(None, "", event)


def _json_renderer() -> Processor:
    def render(logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        event_dict = structlog.processors.format_exc_info(logger, name, event_dict)
        return orjson.dumps(event_dict, default=str).decode()

    return render


def configure_logging(config: Config, *, stream: IO[str] | None = None) -> None:
    """Route all logging through structlog as `config` says. Safe to call more than once."""
    stream = stream or sys.stderr
    on_terminal = hasattr(stream, "isatty") and stream.isatty()
    use_console = config.log_format == "console" or (config.log_format == "auto" and on_terminal)
    level = getattr(logging, config.log_level.upper())
    timestamp = _Timestamp()

    console = logging.StreamHandler(stream)
    console.setFormatter(
        _EventFormatter(
            structlog.dev.ConsoleRenderer(colors=on_terminal) if use_console else _json_renderer(),
            timestamp,
        )
    )
    handlers: list[logging.Handler] = [console]
    if config.log_file is not None:
        path = Path(config.log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            path,
            maxBytes=config.log_file_max_bytes,
            backupCount=config.log_file_backups,
            encoding="utf-8",
        )
        rotating.setFormatter(_EventFormatter(_json_renderer(), timestamp))
        handlers.append(rotating)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    root.setLevel(level)
    # Keel never prints source locations; skipping the caller lookup saves a frame walk per line.
    logging._srcfile = None

    # uvicorn's access log is replaced by Keel's request line, which carries trace ids. Without
    # handlers uvicorn skips building its line altogether.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(max(level, logging.INFO))

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_logger_name,
            timestamp,
            add_trace_ids,
            structlog.processors.StackInfoRenderer(),
            _to_stdlib,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )


def _add_logger_name(logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name:
        event_dict["logger"] = name
    return event_dict


def get_logger(name: str) -> Any:
    """A structlog logger named `name` (e.g. `keel.http`)."""
    return structlog.get_logger(name)
