"""Request body limits: total size, and JSON nesting depth checked while the body streams in.

Both checks run on the bytes as they arrive, before any parser sees them, so an oversized or
deeply nested body costs the server no more than the limit to reject.
"""

from __future__ import annotations

import re

from starlette.types import Message, Receive

from keel.core.errors import JSONTooDeep, MalformedJSON, PayloadTooLarge

__all__ = ["JsonDepthScanner", "LimitedReceive"]

_JSON_TOKENS = re.compile(rb'[\[\]{}"\\]')
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPENERS, _CLOSERS = frozenset(b"[{"), frozenset(b"]}")


def _require_utf8(first_chunk: bytes) -> None:
    # JSON on the wire is UTF-8 (RFC 8259); a UTF-16/32 body would hide its brackets from a
    # byte scanner, so it is refused rather than scanned wrongly.
    if b"\x00" in first_chunk[:4]:
        raise MalformedJSON("JSON bodies must be UTF-8 encoded.")


class JsonDepthScanner:
    """Tracks bracket depth outside JSON strings across chunks; raises past the limit."""

    __slots__ = ("depth", "escaped", "in_string", "limit", "started")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.started = False

    def feed(self, data: bytes) -> None:
        """Scan the next chunk of the body."""
        if not data:
            return  # an empty chunk must not consume a pending escape
        if not self.started:
            self.started = True
            _require_utf8(data)
        self._scan(data)

    def _scan(self, data: bytes) -> None:
        skip = 0 if self.escaped else -1
        self.escaped = False
        for match in _JSON_TOKENS.finditer(data):
            position = match.start()
            if position == skip:
                continue
            char = data[position]
            if self.in_string:
                if char == _BACKSLASH:
                    if position + 1 < len(data):
                        skip = position + 1
                    else:
                        self.escaped = True
                elif char == _QUOTE:
                    self.in_string = False
            elif char == _QUOTE:
                self.in_string = True
            elif char in _OPENERS:
                self.depth += 1
                if self.depth > self.limit:
                    raise JSONTooDeep(f"JSON nesting deeper than {self.limit} levels.")
            elif char in _CLOSERS:
                self.depth -= 1


class LimitedReceive:
    """Wraps `receive`: counts body bytes and feeds JSON bodies to a depth scanner."""

    __slots__ = ("limit", "receive", "received", "scanner")

    def __init__(self, receive: Receive, *, limit: int, json_depth: int | None) -> None:
        self.receive = receive
        self.limit = limit
        self.received = 0
        self.scanner = JsonDepthScanner(json_depth) if json_depth is not None else None

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            self.received += len(body)
            if self.received > self.limit:
                raise PayloadTooLarge(f"The request body exceeds {self.limit} bytes.")
            if self.scanner is not None and body:
                self.scanner.feed(body)
        return message
