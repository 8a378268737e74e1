"""Errors: every failure is RFC 9457 problem+json with a trace id, and leaks nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from keel import Config, Keel
from keel.core.errors import KeelError, NotFound, PayloadTooLarge, ServiceUnavailable
from tests.protection.test_guard import assert_problem


async def test_unknown_route_is_a_problem(client: httpx.AsyncClient) -> None:
    """404 from the router is problem+json."""
    assert_problem(await client.get("/api/v1/nothing-here"), 404)


async def test_wrong_method_is_a_problem(client: httpx.AsyncClient) -> None:
    """405 keeps its Allow header and is problem+json."""
    response = await client.delete("/healthz")
    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]


async def test_validation_errors_list_each_field_without_input(
    user_client: httpx.AsyncClient, user_app: tuple[FastAPI, Keel]
) -> None:
    """Each invalid field is listed with a JSON pointer; submitted values are not echoed."""
    response = await user_client.post("/items", json={"name": "", "tags": "hunter2"})
    body = assert_problem(response, 422, "validation-failed")
    pointers = {error["pointer"] for error in body["errors"]}
    assert pointers == {"/name", "/tags"}
    assert all(error["location"] == "body" for error in body["errors"])
    assert "hunter2" not in response.text
    response = await user_client.get("/items/not-a-number")
    body = assert_problem(response, 422)
    assert body["errors"][0]["location"] == "path"


async def test_domain_error_keeps_status_and_detail(user_client: httpx.AsyncClient) -> None:
    """A KeelError raised by a route renders with its own status, type and detail."""
    body = assert_problem(await user_client.get("/items/999"), 404, "not-found")
    assert body["detail"] == "item 999 does not exist"


async def test_unexpected_exception_leaks_nothing(
    user_client: httpx.AsyncClient, capsys: object
) -> None:
    """An unhandled exception is a generic 500: no message, stack, SQL, secret or path."""
    response = await user_client.get("/boom")
    body = assert_problem(response, 500)
    for leak in ("hunter2", "/srv/app", "SELECT", "Traceback", "RuntimeError", "secret"):
        assert leak not in response.text
    assert body["detail"] == "An unexpected error occurred."
    assert body["trace_id"] == response.headers["traceparent"].split("-")[1]


def test_error_classes_default_detail_is_docstring() -> None:
    """The class docstring is the default detail; the problem type is stable."""
    error = NotFound()
    assert error.detail == "The resource was not found."
    assert error.problem_type == "urn:keel:problem:not-found"
    assert PayloadTooLarge().status == 413
    assert ServiceUnavailable("upstream down").detail == "upstream down"
    assert issubclass(NotFound, KeelError)


async def test_failure_after_the_response_started_is_not_rendered_twice(config: Config) -> None:
    """Once headers are sent, an exception aborts the response instead of a second one."""
    from asgi_lifespan import LifespanManager
    from fastapi.responses import StreamingResponse

    from keel import install
    from tests.conftest import client_for

    application = FastAPI()
    install(application, config)

    async def body() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("mid-stream")

    @application.get("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(body())

    async with LifespanManager(application), client_for(application) as http:
        with pytest.raises(RuntimeError, match="mid-stream"):
            await http.get("/stream")


def test_body_errors_keep_their_detail() -> None:
    """Errors raised while reading the body (also HTTPExceptions) keep detail and status."""
    from keel.core.errors import JSONTooDeep, MalformedJSON

    for error in (JSONTooDeep("too deep"), MalformedJSON("not json"), PayloadTooLarge("big")):
        assert error.detail in ("too deep", "not json", "big")
        assert error.status_code == error.status  # type: ignore[attr-defined]
        assert str(error).endswith(error.detail)


async def test_server_side_keel_errors_are_hidden_and_logged(config: Config) -> None:
    """A 5xx KeelError raised in a route shows no detail (it may name files or URLs) unless
    it is meant for clients, like 503 with its Retry-After."""
    from asgi_lifespan import LifespanManager

    from keel import install
    from keel.core.errors import StartupError
    from tests.conftest import client_for

    application = FastAPI()
    install(application, config)

    @application.get("/internal")
    async def internal() -> None:
        raise StartupError("cannot open /srv/app/secret.db at postgres://u:pw@db")

    @application.get("/busy")
    async def busy() -> None:
        raise ServiceUnavailable("Upstream is down.", headers={"Retry-After": "7"})

    async with LifespanManager(application), client_for(application) as http:
        hidden = await http.get("/internal")
        shown = await http.get("/busy")
    body = assert_problem(hidden, 500)
    assert "/srv" not in hidden.text and "pw@" not in hidden.text
    assert body["detail"] == "An unexpected error occurred."
    assert assert_problem(shown, 503, "service-unavailable")["detail"] == "Upstream is down."
    assert shown.headers["retry-after"] == "7"
