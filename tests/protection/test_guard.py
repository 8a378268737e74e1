"""The guard: every bad request is refused with problem+json before any route runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request

from keel import Config, Keel
from tests.conftest import build_user_app, client_for, count_items, items_metadata

PROBLEM = "application/problem+json"


def assert_problem(
    response: httpx.Response, status: int, slug: str | None = None
) -> dict[str, Any]:
    """The response is a problem document with `status` (and type `slug`) and a trace id."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert len(body["trace_id"]) == 32
    if slug is not None:
        assert body["type"] == f"urn:keel:problem:{slug}"
    return body


async def test_bad_host_is_refused_and_nothing_written(
    user_client: httpx.AsyncClient, user_app: tuple[FastAPI, Keel]
) -> None:
    """A Host the server does not answer for (DNS rebinding) gets 400 and reaches no route."""
    response = await user_client.post(
        "/items", json={"name": "x"}, headers={"host": "attacker.example"}
    )
    assert_problem(response, 400, "invalid-host")
    assert await count_items(user_app[1]) == 0


async def test_missing_host_is_refused(user_client: httpx.AsyncClient) -> None:
    """A request without any Host header is refused."""
    response = await user_client.get("/openapi.json", headers={"host": ""})
    assert_problem(response, 400, "invalid-host")


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000"])
async def test_loopback_hosts_are_accepted(user_client: httpx.AsyncClient, host: str) -> None:
    """Localhost names, with or without a port, are always answered."""
    response = await user_client.get("/openapi.json", headers={"host": host})
    assert response.status_code == 200


async def test_foreign_origin_post_is_refused_and_nothing_written(
    user_client: httpx.AsyncClient, user_app: tuple[FastAPI, Keel]
) -> None:
    """A cross-site POST (a page on another origin) gets 403 and writes nothing."""
    response = await user_client.post(
        "/items", json={"name": "x"}, headers={"origin": "https://evil.example"}
    )
    assert_problem(response, 403, "origin-rejected")
    response = await user_client.post("/items", json={"name": "x"}, headers={"origin": "null"})
    assert_problem(response, 403, "origin-rejected")
    assert await count_items(user_app[1]) == 0


async def test_same_origin_post_and_originless_post_pass(
    user_client: httpx.AsyncClient, user_app: tuple[FastAPI, Keel]
) -> None:
    """The page's own origin, and clients that send no Origin (curl, SDKs), may write."""
    response = await user_client.post(
        "/items", json={"name": "a"}, headers={"origin": "http://127.0.0.1:8000"}
    )
    assert response.status_code == 201, response.text
    response = await user_client.post("/items", json={"name": "b"})
    assert response.status_code == 201
    assert await count_items(user_app[1]) == 2


async def test_foreign_origin_may_read(user_client: httpx.AsyncClient) -> None:
    """Safe methods are not blocked by Origin (the browser withholds the response instead)."""
    response = await user_client.get("/healthz", headers={"origin": "https://evil.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


@pytest.fixture
async def cors_app(
    make_config: Callable[..., Config],
) -> AsyncIterator[tuple[httpx.AsyncClient, Keel]]:
    """The user app with one allowed CORS origin, credentials allowed."""
    config = make_config(cors_origins="https://app.example", cors_allow_credentials=True)
    application, keel = build_user_app(config)
    async with LifespanManager(application):
        async with keel.db.transaction() as session:
            await (await session.connection()).run_sync(items_metadata.create_all)
        async with client_for(application) as http:
            yield http, keel


async def test_cors_preflight_from_unlisted_origin_is_refused(
    cors_app: tuple[httpx.AsyncClient, Keel],
) -> None:
    """A preflight from an origin not on the allowlist is refused and grants nothing."""
    http, _keel = cors_app
    response = await http.options(
        "/items",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert_problem(response, 403, "origin-rejected")
    assert "access-control-allow-origin" not in response.headers


async def test_cors_preflight_from_listed_origin_is_granted(
    cors_app: tuple[httpx.AsyncClient, Keel],
) -> None:
    """The allowed origin gets its own origin back (never `*`) and only known headers."""
    http, keel = cors_app
    response = await http.options(
        "/items",
        headers={
            "origin": "https://app.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, x-evil",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["access-control-allow-headers"] == "content-type"
    response = await http.post(
        "/items", json={"name": "x"}, headers={"origin": "https://app.example"}
    )
    assert response.status_code == 201
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert await count_items(keel) == 1


def test_wildcard_cors_origin_is_rejected_by_config() -> None:
    """`*` cannot be configured as a CORS origin."""
    with pytest.raises(ValueError, match="wildcard"):
        Config(cors_origins="*")


async def test_oversized_body_is_refused_by_length(
    make_config: Callable[..., Config],
) -> None:
    """A declared Content-Length over the limit gets 413 before the body is read."""
    application, keel = build_user_app(make_config(max_body_bytes=2048))
    async with LifespanManager(application), client_for(application) as http:
        async with keel.db.transaction() as session:
            await (await session.connection()).run_sync(items_metadata.create_all)
        body = orjson.dumps({"name": "x", "tags": ["y" * 100] * 40})
        response = await http.post(
            "/items", content=body, headers={"content-type": "application/json"}
        )
        assert_problem(response, 413, "payload-too-large")
        assert await count_items(keel) == 0


async def test_oversized_streamed_body_is_refused(
    make_config: Callable[..., Config],
) -> None:
    """A chunked body with no Content-Length is cut off once it passes the limit."""
    application, keel = build_user_app(make_config(max_body_bytes=2048))

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "x", "tags": ['
        for _ in range(100):
            yield b'"' + b"y" * 100 + b'",'
        yield b'"z"]}'

    async with LifespanManager(application), client_for(application) as http:
        async with keel.db.transaction() as session:
            await (await session.connection()).run_sync(items_metadata.create_all)
        response = await http.post(
            "/items", content=chunks(), headers={"content-type": "application/json"}
        )
        assert_problem(response, 413, "payload-too-large")
        assert await count_items(keel) == 0


async def test_deep_json_is_refused_and_nothing_written(
    user_client: httpx.AsyncClient, user_app: tuple[FastAPI, Keel]
) -> None:
    """JSON nested past the depth limit is refused while streaming in, before parsing."""
    deep = '{"name": "x", "tags": ' + "[" * 200 + "]" * 200 + "}"
    response = await user_client.post(
        "/items", content=deep, headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "json-too-deep")
    assert await count_items(user_app[1]) == 0


async def test_brackets_inside_strings_do_not_count(
    user_client: httpx.AsyncClient,
) -> None:
    """Brackets inside JSON strings (and escaped quotes) are not nesting."""
    name = '\\"' + "[" * 60 + "{" * 60 + "\\\\"
    response = await user_client.post(
        "/items",
        content='{"name": "' + name + '"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201, response.text


async def test_malformed_json_is_a_problem_and_nothing_written(
    user_client: httpx.AsyncClient, user_app: tuple[FastAPI, Keel]
) -> None:
    """Malformed JSON gets 400 malformed-json without echoing the body."""
    response = await user_client.post(
        "/items", content=b'{"name": "secret-value', headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 400, "malformed-json")
    assert "secret-value" not in response.text
    assert "at character 9" in body["detail"]
    assert await count_items(user_app[1]) == 0


async def test_security_headers_on_every_response(user_client: httpx.AsyncClient) -> None:
    """Successes, 404s and guard rejections all carry the security headers."""
    for response in (
        await user_client.get("/healthz"),
        await user_client.get("/no-such-page"),
        await user_client.get("/openapi.json", headers={"host": "evil.example"}),
    ):
        csp = response.headers["content-security-policy"]
        assert "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cross-origin-opener-policy"] == "same-origin"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "strict-transport-security" not in response.headers


@pytest.fixture
async def https_client(
    make_config: Callable[..., Config],
) -> AsyncIterator[httpx.AsyncClient]:
    """Keel's app behind a TLS proxy at 10.0.0.5 with public URL https://ops.example."""
    from keel import create_app

    config = make_config(public_url="https://ops.example", trusted_proxies="10.0.0.0/24")
    application = create_app(config, configure_logs=False)
    async with LifespanManager(application):
        yield httpx.AsyncClient(
            transport=httpx.ASGITransport(app=application, client=("10.0.0.5", 4000)),
            base_url="http://ops.example",
        )


async def test_https_redirect_and_hsts(https_client: httpx.AsyncClient) -> None:
    """Plain http is redirected to the public https URL; https responses carry HSTS."""
    response = await https_client.get("/api/v1/openapi.json?x=1")
    assert response.status_code == 308
    assert response.headers["location"] == "https://ops.example/api/v1/openapi.json?x=1"
    response = await https_client.get(
        "/api/v1/openapi.json", headers={"x-forwarded-proto": "https"}
    )
    assert response.status_code == 200
    assert response.headers["strict-transport-security"].startswith("max-age=")
    probe = await https_client.get("/healthz")
    assert probe.status_code == 200, "probes over plain http are not redirected"


async def test_redirect_target_ignores_the_request_host(
    make_config: Callable[..., Config],
) -> None:
    """The redirect goes to the configured public URL, never to the Host the client sent,
    and keeps the path's percent-encoding."""
    from keel import create_app

    config = make_config(public_url="https://ops.example", allowed_hosts="other.example")
    application = create_app(config, configure_logs=False)
    async with LifespanManager(application), client_for(application) as http:
        response = await http.get("/a%3Fnext=x%2523y?q=1", headers={"host": "other.example"})
    assert response.status_code == 308
    assert response.headers["location"] == "https://ops.example/a%3Fnext=x%2523y?q=1"


async def test_probes_answer_any_host(user_client: httpx.AsyncClient) -> None:
    """Liveness and readiness answer probes that use the pod IP as Host; other paths do not."""
    assert (await user_client.get("/healthz", headers={"host": "10.1.2.3:8000"})).status_code == 200
    assert (await user_client.get("/readyz", headers={"host": "10.1.2.3:8000"})).status_code == 200
    metrics = await user_client.get("/metrics", headers={"host": "10.1.2.3:8000"})
    assert_problem(metrics, 400, "invalid-host")


async def test_body_limits_apply_to_get_and_to_bodies_without_content_type(
    make_config: Callable[..., Config],
) -> None:
    """A chunked GET body is cut at the limit, and JSON sent without a Content-Type (which
    FastAPI still parses) or as UTF-16 is depth-checked or refused."""
    application, keel = build_user_app(make_config(max_body_bytes=2048, max_json_depth=5))

    @application.get("/echo-size")
    async def echo_size(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    async def big() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1000

    deep = '{"name": "x", "tags": ' + "[" * 50 + "]" * 50 + "}"
    async with LifespanManager(application), client_for(application) as http:
        async with keel.db.transaction() as session:
            await (await session.connection()).run_sync(items_metadata.create_all)
        assert_problem(await http.request("GET", "/echo-size", content=big()), 413)
        assert_problem(await http.post("/items", content=deep.encode()), 400, "json-too-deep")
        utf16 = await http.post(
            "/items",
            content=deep.encode("utf-16-le"),
            headers={"content-type": "application/json"},
        )
        assert_problem(utf16, 400, "malformed-json")
        assert await count_items(keel) == 0


async def test_forwarded_host_is_ignored_unless_trusted(
    make_config: Callable[..., Config],
) -> None:
    """A client cannot slip a rebinding Host past the allowlist through a trusted proxy by
    sending its own X-Forwarded-Host; only `trust_forwarded_host` honours that header."""
    from keel import create_app

    for trust, expected in ((False, 400), (True, 200)):
        config = make_config(trusted_proxies="10.0.0.0/24", trust_forwarded_host=trust)
        application = create_app(config, configure_logs=False)
        transport = httpx.ASGITransport(app=application, client=("10.0.0.5", 4000))
        async with (
            LifespanManager(application),
            httpx.AsyncClient(transport=transport, base_url="http://attacker.example") as http,
        ):
            response = await http.get(
                "/api/v1/openapi.json", headers={"x-forwarded-host": "localhost"}
            )
        assert response.status_code == expected, trust


async def test_forwarded_headers_only_from_trusted_proxies(
    make_config: Callable[..., Config],
) -> None:
    """X-Forwarded-* from an untrusted peer is ignored; from a trusted proxy it is applied."""
    from keel.protection.proxy import TrustedProxies

    proxies = TrustedProxies(["10.0.0.0/24"], trust_host=True)
    scope: dict[str, Any] = {
        "type": "http",
        "scheme": "http",
        "client": ("203.0.113.9", 1),
        "headers": [(b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-proto", b"https")],
    }
    proxies.apply(scope)
    assert scope["client"] == ("203.0.113.9", 1)
    assert scope["scheme"] == "http"
    scope["client"] = ("10.0.0.7", 1)
    scope["headers"] = [
        (b"x-forwarded-for", b"6.6.6.6, 198.51.100.2, 10.0.0.9"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"ops.example"),
        (b"host", b"10.0.0.7"),
    ]
    proxies.apply(scope)
    assert scope["client"] == ("198.51.100.2", 0), "the spoofable left-most hop is not believed"
    assert scope["scheme"] == "https"
    assert (b"host", b"ops.example") in scope["headers"]
    assert (b"host", b"10.0.0.7") not in scope["headers"]
    assert make_config().trusted_proxies == []


async def test_route_may_set_its_own_security_header(config: Config) -> None:
    """A route's own CSP wins over the default; the other headers are still added."""
    from fastapi import Response as FastAPIResponse

    from keel import install

    application = FastAPI()
    install(application, config)

    @application.get("/framed")
    async def framed() -> FastAPIResponse:
        return FastAPIResponse(
            "ok", headers={"Content-Security-Policy": "frame-ancestors https://parent.example"}
        )

    async with LifespanManager(application), client_for(application) as http:
        response = await http.get("/framed")
    assert response.headers.get_list("content-security-policy") == [
        "frame-ancestors https://parent.example"
    ]
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_route_vary_combines_with_cors_vary(make_config: Callable[..., Config]) -> None:
    """A route's own `Vary` is kept and CORS still adds `Vary: Origin` (values combine)."""
    from fastapi import Response as FastAPIResponse

    from keel import install

    application = FastAPI()
    install(application, make_config(cors_origins="https://app.example"))

    @application.get("/negotiated")
    async def negotiated() -> FastAPIResponse:
        return FastAPIResponse("ok", headers={"Vary": "Accept"})

    async with LifespanManager(application), client_for(application) as http:
        response = await http.get("/negotiated", headers={"origin": "https://app.example"})
    assert sorted(response.headers.get_list("vary")) == ["Accept", "Origin"]
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "traceparent" in response.headers
