"""Tracing: W3C traceparent continued or created, ids in responses and in every log line."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel import Config
from keel.observability.logging import configure_logging
from keel.observability.tracing import new_trace, parse_traceparent

INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_incoming_traceparent_is_continued(client: httpx.AsyncClient) -> None:
    """A valid incoming trace id is kept; its span becomes our parent; we answer our span."""
    response = await client.get("/healthz", headers={"traceparent": INCOMING})
    version, trace_id, span_id, flags = response.headers["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span_id != "00f067aa0ba902b7"
    assert response.headers["x-request-id"] == trace_id


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
    ],
)
async def test_invalid_traceparent_is_replaced(client: httpx.AsyncClient, header: str) -> None:
    """An invalid traceparent starts a new trace instead of being echoed."""
    response = await client.get("/healthz", headers={"traceparent": header})
    trace_id = response.headers["traceparent"].split("-")[1]
    assert trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"
    assert len(trace_id) == 32
    assert trace_id != "0" * 32


async def test_request_id_is_echoed_only_when_safe(client: httpx.AsyncClient) -> None:
    """A sane X-Request-ID is echoed; a hostile one is replaced by the trace id."""
    response = await client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    response = await client.get("/healthz", headers={"x-request-id": "a\r\nb" + "x" * 300})
    assert response.headers["x-request-id"] == response.headers["traceparent"].split("-")[1]


def test_future_versions_are_accepted() -> None:
    """A higher version may append fields (W3C forward compatibility)."""
    parsed = parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more")
    assert parsed == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", False)


@given(st.text(max_size=80))
def test_parser_never_crashes(value: str) -> None:
    """Any header value yields either a valid span or a fresh trace."""
    trace = new_trace(value)
    assert len(trace.trace_id) == 32
    assert len(trace.span_id) == 16


async def test_log_lines_carry_trace_ids(client: httpx.AsyncClient) -> None:
    """Every log line written during a request carries trace_id, span_id and parent_span_id."""
    stream = io.StringIO()
    configure_logging(Config(log_format="json"), stream=stream)
    try:
        response = await client.get("/healthz", headers={"traceparent": INCOMING})
    finally:
        configure_logging(Config(log_format="json", log_level="debug"))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    request_lines = [line for line in lines if line.get("event") == "request"]
    assert request_lines, lines
    line = request_lines[0]
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert line["parent_span_id"] == "00f067aa0ba902b7"
    assert line["span_id"] == response.headers["traceparent"].split("-")[2]
    assert line["status"] == 200
    assert line["path"] == "/healthz"


def test_stdlib_loggers_are_structured_too() -> None:
    """Lines from libraries (uvicorn, alembic) come out as the same JSON objects."""
    stream = io.StringIO()
    configure_logging(Config(log_format="json"), stream=stream)
    try:
        logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    finally:
        configure_logging(Config(log_format="json", log_level="debug"))
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["event"] == "Started server process [42]"
    assert line["logger"] == "uvicorn.error"
    assert "color_message" not in line
