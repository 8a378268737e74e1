"""WebSocket handshakes pass the same Host and Origin checks as HTTP requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket

from keel import Config, install


def _ws_app(tmp_path: Path) -> FastAPI:
    application = FastAPI()
    install(application, Config(data_dir=tmp_path))

    @application.websocket("/ws")
    async def hello(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    return application


async def _handshake(application: FastAPI, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Run one WebSocket handshake against the ASGI app; return what it sent."""
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "subprotocols": [],
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    incoming = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await application(scope, receive, send)
    return sent


async def test_websocket_from_own_origin_connects(tmp_path: Path) -> None:
    """A handshake from the page's own origin is accepted."""
    sent = await _handshake(
        _ws_app(tmp_path), {"host": "localhost:8000", "origin": "http://localhost:8000"}
    )
    assert sent[0]["type"] == "websocket.accept"
    assert sent[1] == {"type": "websocket.send", "text": "hello"}


@pytest.mark.parametrize(
    "headers",
    [
        {"host": "localhost:8000", "origin": "https://evil.example"},
        {"host": "evil.example", "origin": "http://evil.example"},
    ],
)
async def test_websocket_from_foreign_origin_or_host_is_closed(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    """Cross-site WebSocket hijacking and DNS rebinding are refused with close code 1008."""
    sent = await _handshake(_ws_app(tmp_path), headers)
    assert sent == [{"type": "websocket.close", "code": 1008}]
