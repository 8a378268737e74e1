"""The JSON depth scanner agrees with the real nesting depth however the body is chunked."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keel.core.errors import JSONTooDeep, PayloadTooLarge
from keel.protection.limits import JsonDepthScanner, LimitedReceive

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab[]{}"\\/ \n'),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='k[]{"\\', max_size=4), children, max_size=3)
    ),
    max_leaves=30,
)


def depth(value: Any) -> int:
    """The nesting depth of a decoded JSON value (a scalar is 0)."""
    if isinstance(value, list):
        return 1 + max((depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(item) for item in value.values()), default=0)
    return 0


@settings(max_examples=300)
@given(value=json_values, limit=st.integers(min_value=1, max_value=6), data=st.data())
def test_scanner_matches_true_depth(value: Any, limit: int, data: st.DataObject) -> None:
    """For any JSON and any split into chunks, the scanner raises exactly when too deep."""
    body = json.dumps(value).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=6)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    scanner = JsonDepthScanner(limit)
    too_deep = depth(value) > limit
    try:
        for chunk in chunks:
            scanner.feed(chunk)
    except JSONTooDeep:
        assert too_deep
    else:
        assert not too_deep


def test_escape_split_by_an_empty_chunk() -> None:
    """A backslash ending one chunk still escapes the first byte after an empty chunk."""
    scanner = JsonDepthScanner(1)
    for chunk in (b'["a\\', b"", b'"[[[', b'"]'):
        scanner.feed(chunk)
    assert scanner.depth == 0


async def test_limited_receive_counts_across_chunks() -> None:
    """The size limit applies to the sum of chunks, not to each one."""
    messages = [
        {"type": "http.request", "body": b"x" * 600, "more_body": True},
        {"type": "http.request", "body": b"x" * 600, "more_body": False},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    limited = LimitedReceive(receive, limit=1000, json_depth=None)
    await limited()
    with pytest.raises(PayloadTooLarge):
        await limited()
