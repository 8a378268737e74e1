"""A flaky upstream on a loopback port, told what to do per test: answer, add latency,
return 5xx/429 with Retry-After, reset the connection, or hang. Served by uvicorn in the
test's event loop; it stops with the test."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import uvicorn


@dataclass
class Behaviour:
    """One planned answer (`status`, `delay`, `retry_after`, `hang`, `json`); resets come
    from `Upstream.resetting_url`."""

    status: int = 200
    delay: float = 0.0
    retry_after: str | None = None
    hang: bool = False
    json: Any = field(default_factory=lambda: {"status": "ok"})


class Upstream:
    """The app: plays `plan` in order, then `default`, and counts requests per method."""

    def __init__(self) -> None:
        self.plan: deque[Behaviour] = deque()
        self.default = Behaviour()
        self.hits: list[tuple[str, str, dict[str, str]]] = []
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def resetting_url(self) -> str:
        """An address that accepts connections and resets them at once."""
        return f"http://127.0.0.1:{self._reset_port}"

    @staticmethod
    def _reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    def then(self, *behaviours: Behaviour) -> None:
        self.plan.extend(behaviours)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.hits.append((scope["method"], scope["path"], headers))
        act = self.plan.popleft() if self.plan else self.default
        if act.hang:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=30)
            return
        if act.delay:
            await asyncio.sleep(act.delay)
        import json

        body = json.dumps(act.json).encode()
        out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if act.retry_after is not None:
            out.append((b"retry-after", act.retry_after.encode()))
        await send({"type": "http.response.start", "status": act.status, "headers": out})
        await send({"type": "http.response.body", "body": body})

    async def start(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        # No log_config or log_level: uvicorn would reconfigure the process-wide loggers.
        config = uvicorn.Config(
            self, log_config=None, log_level=None, lifespan="on", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        self._resetter = await asyncio.start_server(self._reset, "127.0.0.1", 0)
        self._reset_port = self._resetter.sockets[0].getsockname()[1]
        for _ in range(200):
            if self._server.started:
                return
            await asyncio.sleep(0.01)
        raise RuntimeError("the flaky upstream did not start")

    async def stop(self) -> None:
        self._closing.set()
        self._resetter.close()
        await self._resetter.wait_closed()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = True
            try:
                await asyncio.wait_for(self._task, timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
