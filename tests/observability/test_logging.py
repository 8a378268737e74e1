"""Logging: console on a terminal, JSON otherwise, and a size-rotated JSON file."""

from __future__ import annotations

import io
import json
from pathlib import Path

from keel import Config
from keel.observability.logging import configure_logging, get_logger


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _restore() -> None:
    configure_logging(Config(log_format="json", log_level="debug"))


def test_terminal_gets_readable_lines() -> None:
    """On a terminal (format auto) lines are human-readable, not JSON."""
    stream = _Terminal()
    configure_logging(Config(log_format="auto"), stream=stream)
    try:
        get_logger("keel.test").info("hello", answer=42)
    finally:
        _restore()
    text = stream.getvalue()
    assert "hello" in text
    assert "answer" in text
    assert not text.lstrip().startswith("{")


def test_rotating_file_receives_json_and_rotates(tmp_path: Path) -> None:
    """With KEEL_LOG_FILE, JSON lines go to the file, rotated at the size limit."""
    path = tmp_path / "logs" / "keel.log"
    config = Config(log_format="json", log_file=path, log_file_max_bytes=4096, log_file_backups=2)
    configure_logging(config, stream=io.StringIO())
    try:
        logger = get_logger("keel.test")
        for index in range(200):
            logger.info("line", index=index, padding="x" * 50)
    finally:
        _restore()
    rotated = sorted(p.name for p in path.parent.iterdir())
    assert rotated == ["keel.log", "keel.log.1", "keel.log.2"]
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["index"] == 199
    assert last["level"] == "info"
    assert all(p.stat().st_size <= 4096 + 200 for p in path.parent.iterdir())


def test_level_filters_lines() -> None:
    """Lines below the configured level are dropped."""
    stream = io.StringIO()
    configure_logging(Config(log_format="json", log_level="warning"), stream=stream)
    try:
        logger = get_logger("keel.test")
        logger.info("quiet")
        logger.warning("loud")
    finally:
        _restore()
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["loud"]
