"""Helpers for registry tests: drive an asset through its lifecycle over the API."""

from __future__ import annotations

from typing import Any

import httpx

BASE = "/api/v1/registry"


def ok(response: httpx.Response, status: int = 200) -> Any:
    """The JSON body after asserting `status`."""
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()


async def create(http: httpx.AsyncClient, kind: str, name: str, data: dict[str, Any]) -> Any:
    """Create an asset (version 1, a draft)."""
    return ok(await http.post(f"{BASE}/{kind}", json={"name": name, "data": data}), 201)


async def draft(http: httpx.AsyncClient, kind: str, name: str, data: dict[str, Any]) -> int:
    """Add a draft; its number."""
    body = ok(await http.post(f"{BASE}/{kind}/{name}/versions", json={"data": data}), 201)
    return int(body["number"])


async def release(
    http: httpx.AsyncClient, kind: str, name: str, number: int, reason: str = "ship it"
) -> Any:
    """Validate and publish version `number` over the head the caller reads first."""
    checked = ok(await http.post(f"{BASE}/{kind}/{name}/versions/{number}/validate"))
    assert checked["state"] == "validated", checked
    head = ok(await http.get(f"{BASE}/{kind}/{name}"))["published_version"]
    return ok(
        await http.post(
            f"{BASE}/{kind}/{name}/versions/{number}/publish",
            json={"reason": reason, "expected_head": head},
        )
    )


async def query(http: httpx.AsyncClient, name: str, sql: str = "SELECT 1") -> None:
    """A published sql_query asset `name`."""
    await create(http, "sql_query", name, {"sql": sql})
    await release(http, "sql_query", name, 1)
