"""Structured logging: one pipeline for Keel's own lines and every stdlib logger (uvicorn, alembic).

A terminal gets a readable console format; anything else gets one JSON object per line. An
optional file receives JSON lines and is rotated by size. Every line written while a request or
job runs carries its `trace_id`, `span_id` and `parent_span_id`. Never log secrets or bodies.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path
from typing import IO, Any

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from keel.core.config import Config
from keel.core.context import current_trace

__all__ = ["add_trace_ids", "configure_logging", "get_logger"]

_HANDLER_MARK = "_keel_handler"


def add_trace_ids(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """Add the current trace position to a log event (if one is running)."""
    trace = current_trace()
    if trace is not None:
        event_dict.setdefault("trace_id", trace.trace_id)
        event_dict.setdefault("span_id", trace.span_id)
        event_dict.setdefault("parent_span_id", trace.parent_span_id)
    return event_dict


def _drop_color_message(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    # uvicorn attaches an ANSI-coloured duplicate of its message as an "extra".
    event_dict.pop("color_message", None)
    return event_dict


def _json_dumps(value: Any, **_kw: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
    ]


def _formatter(renderer: Processor) -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *_shared_processors(),
            structlog.stdlib.ExtraAdder(),
            _drop_color_message,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )


def _json_renderer() -> Processor:
    # format_exc_info runs inside the JSON chain only: the console renderer prints its own.
    def render(logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        event_dict = structlog.processors.format_exc_info(logger, name, event_dict)
        return _json_dumps(event_dict)

    return render


def configure_logging(config: Config, *, stream: IO[str] | None = None) -> None:
    """Route all logging through structlog as `config` says. Safe to call more than once."""
    stream = stream or sys.stderr
    use_console = config.log_format == "console" or (
        config.log_format == "auto" and hasattr(stream, "isatty") and stream.isatty()
    )
    level = getattr(logging, config.log_level.upper())

    handlers: list[logging.Handler] = []
    console = logging.StreamHandler(stream)
    console.setFormatter(
        _formatter(
            structlog.dev.ConsoleRenderer(colors=use_console and stream.isatty())
            if use_console
            else _json_renderer()
        )
    )
    handlers.append(console)
    if config.log_file is not None:
        path = Path(config.log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            path,
            maxBytes=config.log_file_max_bytes,
            backupCount=config.log_file_backups,
            encoding="utf-8",
        )
        rotating.setFormatter(_formatter(_json_renderer()))
        handlers.append(rotating)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    root.setLevel(level)

    # uvicorn's own access log is replaced by Keel's request line, which carries trace ids.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(max(level, logging.INFO))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.UnicodeDecoder(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    """A structlog logger named `name` (e.g. `keel.http`)."""
    return structlog.stdlib.get_logger(name)
