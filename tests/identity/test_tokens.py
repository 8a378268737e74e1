"""Access and refresh tokens: issue, verify, every attack refused (each its own test), refresh
rotation and reuse, logout, privilege change, key rotation, cross-process revocation, cache."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from types import SimpleNamespace
from typing import Any

import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi import FastAPI
from sqlalchemy import func, select, update

from keel import Config, create_app
from keel.identity import runtime as runtime_module
from keel.identity import tokens
from keel.identity.models import RefreshToken, Revocation, SigningKey
from keel.identity.revocation import CHANNEL, RevocationSet
from keel.identity.runtime import identity_runtime
from keel.identity.tokens import InvalidToken, SigningKeys, TokenVerifier
from tests.conftest import client_for
from tests.identity.support import PASSWORD, Org, build_org, json_of
from tests.protection.test_guard import assert_problem

ADMIN = "admin-a@example.com"
PROTECTED = "/api/v1/users"
INVALID = 'Bearer error="invalid_token"'


# --- helpers -----------------------------------------------------------------------------------
def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JWT's header and claims, unverified."""
    header, payload, _ = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload))


def compact(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS built by hand (any header, any signature)."""
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


def keys_of(org: Org) -> SigningKeys:
    return identity_runtime(org.keel).keys


def claims_for(org: Org, email: str = ADMIN, **changes: Any) -> dict[str, Any]:
    """Valid access-token claims for `email`; a change to None drops that claim."""
    config, now = org.keel.config, int(time.time())
    claims: dict[str, Any] = {
        "iss": config.token_issuer,
        "aud": config.jwt_audience,
        "sub": org.users[email],
        "tid": org.tenants["acme"],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "scope": "users:read",
    }
    return {name: value for name, value in {**claims, **changes}.items() if value is not None}


def real_header(org: Org) -> dict[str, Any]:
    """The header fields of a real token but `alg` (which each forgery sets itself)."""
    return {"typ": "at+jwt", "kid": keys_of(org).current_kid}


async def call(
    http_app: Org | FastAPI, token: str | bytes, path: str = PROTECTED
) -> httpx.Response:
    app = http_app.app if isinstance(http_app, Org) else http_app
    value = b"Bearer " + token if isinstance(token, bytes) else f"Bearer {token}"
    async with client_for(app) as http:
        return await http.get(path, headers={"authorization": value})  # type: ignore[dict-item]


async def assert_accepted(org: Org, token: str, path: str = PROTECTED) -> None:
    response = await call(org, token, path)
    assert response.status_code == 200, response.text


async def assert_refused(org: Org | FastAPI, token: str | bytes) -> dict[str, Any]:
    """The protected route answers 401 invalid_token (a problem document, never a 500)."""
    response = await call(org, token)
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == INVALID
    return body


async def login(org: Org, email: str = ADMIN, password: str = PASSWORD) -> httpx.Response:
    async with org.client() as http:
        return await http.post("/api/v1/auth/token", json={"email": email, "password": password})


async def pair_of(org: Org, email: str = ADMIN) -> dict[str, Any]:
    """A fresh access and refresh token for `email`."""
    result: dict[str, Any] = json_of(await login(org, email))
    return result


async def refresh(org: Org, refresh_token: str) -> httpx.Response:
    async with org.client() as http:
        return await http.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})


async def logout(org: Org, refresh_token: str | None = None, bearer: str | None = None) -> None:
    headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
    body = {"refresh_token": refresh_token} if refresh_token else {}
    async with org.client(**headers) as http:
        response = await http.post("/api/v1/auth/logout", json=body)
    assert response.status_code == 204, response.text


async def count(org: Org, model: Any) -> int:
    async with org.keel.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def published_kids(org: Org) -> list[str]:
    async with org.client() as http:
        return [key["kid"] for key in json_of(await http.get("/.well-known/jwks.json"))["keys"]]


def reuse_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        record.msg
        for record in caplog.records
        if isinstance(record.msg, dict) and record.msg.get("event") == "auth.refresh_reuse"
    ]


# --- issuing -----------------------------------------------------------------------------------
async def test_token_endpoint_issues_an_eddsa_jwt_and_a_refresh_token(org: Org) -> None:
    """The pair has the documented shape; the JWT's header and claims are as documented, it
    verifies with the published JWKS, works as a bearer token, and is not cached. A wrong
    password gets a 401 problem and no token."""
    response = await login(org)
    async with org.client() as http:
        jwks = json_of(await http.get("/.well-known/jwks.json"))
    body = json_of(response)
    assert response.headers["cache-control"] == "no-store"
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 15 * 60
    assert body["refresh_token"].startswith("keel_rt_")
    header, claims = parts(body["access_token"])
    assert header["alg"] == "EdDSA" and header["typ"] == "at+jwt"
    published = {key["kid"]: key for key in jwks["keys"]}
    assert header["kid"] in published
    config = org.keel.config
    assert set(claims) == {"iss", "aud", "sub", "tid", "iat", "nbf", "exp", "jti", "sid", "scope"}
    assert claims["iss"] == config.token_issuer and claims["aud"] == config.jwt_audience
    assert claims["sub"] == org.users[ADMIN] and claims["tid"] == org.tenants["acme"]
    assert claims["nbf"] == claims["iat"] and claims["exp"] - claims["iat"] == 15 * 60
    assert isinstance(claims["jti"], str) and isinstance(claims["sid"], str)
    assert "users:read" in claims["scope"].split()
    public = jwt.PyJWK(published[header["kid"]]).key
    assert jwt.decode(body["access_token"], public, ["EdDSA"], audience=claims["aud"]) == claims
    me = json_of(await call(org, body["access_token"], "/api/v1/auth/session"))
    assert me["via"] == "token" and me["user"]["id"] == org.users[ADMIN]
    assert me["tenant_id"] == org.tenants["acme"]
    assert me["permissions"] == sorted(claims["scope"].split())
    wrong = await login(org, ADMIN, "wrong" * 4)
    assert_problem(wrong, 401, "login-failed")
    assert "token" not in wrong.text


# --- attacks: each its own test ---------------------------------------------------------------
async def test_alg_none_is_refused(org: Org) -> None:
    """An unsigned token (`alg: none`, any spelling) with valid claims is refused."""
    for alg in ("none", "None", "NONE"):
        await assert_refused(org, compact({**real_header(org), "alg": alg}, claims_for(org)))


async def test_hs256_signed_with_the_public_key_is_refused(org: Org) -> None:
    """Algorithm confusion: HS256 keyed with the public key (raw 32 bytes, PEM, or the JWK
    `x`), with the real kid, is refused."""
    public = keys_of(org).public[str(keys_of(org).current_kid)]
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {**real_header(org), "alg": "HS256"}
    for secret in (raw, pem, b64(raw).encode()):
        unsigned = compact(header, claims_for(org)).rsplit(".", 1)[0]
        mac = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
        await assert_refused(org, f"{unsigned}.{b64(mac)}")


async def test_other_algorithms_are_refused(org: Org) -> None:
    """RS256, PS256 and ES256 tokens signed by an attacker's key with the real kid are
    refused: only EdDSA is accepted."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    for alg, key in (("RS256", rsa_key), ("PS256", rsa_key), ("ES256", ec_key)):
        forged = jwt.encode(claims_for(org), key, algorithm=alg, headers=real_header(org))
        await assert_refused(org, forged)


async def test_wrong_audience_is_refused(org: Org) -> None:
    """A validly signed token for another audience (or a list without ours) is refused.
    (The control: the same claims with our audience pass, so the attacks here and below that
    sign with the real key are refused for the one claim they change.)"""
    sign = keys_of(org).sign
    await assert_accepted(org, sign(claims_for(org)))
    await assert_refused(org, sign(claims_for(org, aud="another-service")))
    await assert_refused(org, sign(claims_for(org, aud=["another-service"])))


async def test_wrong_issuer_is_refused(org: Org) -> None:
    """A validly signed token from another issuer is refused."""
    body = await assert_refused(org, keys_of(org).sign(claims_for(org, iss="https://evil")))
    assert "issuer" in body["detail"]


async def test_expiry_is_enforced_beyond_the_leeway_only(org: Org) -> None:
    """Expired by more than `jwt_leeway_seconds`: refused; expired by less: accepted."""
    leeway, now = org.keel.config.jwt_leeway_seconds, int(time.time())
    sign = keys_of(org).sign
    late = sign(claims_for(org, iat=now - 900, nbf=now - 900, exp=now - leeway - 30))
    assert "expired" in (await assert_refused(org, late))["detail"]
    await assert_accepted(org, sign(claims_for(org, iat=now - 900, exp=now - leeway // 2)))


async def test_not_yet_valid_beyond_the_leeway_is_refused(org: Org) -> None:
    """`nbf` further in the future than the leeway: refused; within it: accepted."""
    leeway, now = org.keel.config.jwt_leeway_seconds, int(time.time())
    sign = keys_of(org).sign
    early = sign(claims_for(org, nbf=now + leeway + 60, exp=now + 1200))
    assert "not valid yet" in (await assert_refused(org, early))["detail"]
    await assert_accepted(org, sign(claims_for(org, nbf=now + leeway // 2)))


async def test_unknown_kid_is_refused(org: Org, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kid the server does not know is refused (even signed by the real key), and a burst
    of unknown kids reloads the keys from the database at most once."""
    keys = keys_of(org)
    loads = 0
    load = keys.load

    async def counting_load() -> None:
        nonlocal loads
        loads += 1
        await load()

    monkeypatch.setattr(keys, "load", counting_load)
    for n in range(5):
        header = {**real_header(org), "kid": f"unknown-{n}"}
        forged = jwt.encode(claims_for(org), keys._private, algorithm="EdDSA", headers=header)
        assert "unknown" in (await assert_refused(org, forged))["detail"]
    assert loads <= 1


async def test_another_ed25519_key_claiming_the_real_kid_is_refused(org: Org) -> None:
    """An attacker's own Ed25519 key, naming the real kid, does not verify."""
    attacker = ed25519.Ed25519PrivateKey.generate()
    forged = jwt.encode(claims_for(org), attacker, algorithm="EdDSA", headers=real_header(org))
    await assert_refused(org, forged)


async def test_tampered_payload_is_refused(org: Org) -> None:
    """A real token whose claims are edited (more scope, another subject) keeping the
    signature is refused."""
    token = (await pair_of(org, "viewer-a@example.com"))["access_token"]
    header, payload, signature = token.split(".")
    claims = json.loads(unb64(payload))
    for change in ({"scope": "*"}, {"sub": org.users["owner@example.com"]}, {"tid": None}):
        edited = b64(json.dumps({**claims, **change}).encode())
        await assert_refused(org, f"{header}.{edited}.{signature}")
    await assert_accepted(org, token, "/api/v1/auth/session")


async def test_tampered_header_is_refused(org: Org) -> None:
    """A real token whose header is edited (typ, an extra field) keeping the signature is
    refused."""
    token = (await pair_of(org))["access_token"]
    header, payload, signature = token.split(".")
    fields = json.loads(unb64(header))
    for change in ({"typ": "JWT"}, {"x5u": "https://evil/key"}):
        edited = b64(json.dumps({**fields, **change}).encode())
        await assert_refused(org, f"{edited}.{payload}.{signature}")


async def test_tampered_signature_is_refused(org: Org) -> None:
    """A real token with a changed, truncated or stripped signature is refused."""
    token = (await pair_of(org))["access_token"]
    unsigned, signature = token.rsplit(".", 1)
    raw = bytearray(unb64(signature))
    raw[0] ^= 1
    for forged in (f"{unsigned}.{b64(bytes(raw))}", f"{unsigned}.{signature[:-4]}", unsigned + "."):
        await assert_refused(org, forged)


async def test_missing_or_mistyped_claims_are_refused(org: Org) -> None:
    """Validly signed tokens lacking a required claim, or with a claim of the wrong type,
    are refused (401, not 500)."""
    sign = keys_of(org).sign
    for name in ("exp", "iat", "nbf", "iss", "aud", "sub", "jti"):
        await assert_refused(org, sign(claims_for(org, **{name: None})))
    for change in ({"sub": 42}, {"jti": 7}, {"scope": ["*"]}, {"tid": 1}, {"sid": {}}):
        await assert_refused(org, sign(claims_for(org, **change)))
    await assert_refused(org, sign(claims_for(org, exp="never")))


async def test_malformed_tokens_are_401_not_500(org: Org) -> None:
    """Garbage, wrong segment counts, bad base64, a header that is not a JSON object, a
    payload that is not an object: each is a clean 401."""
    good = keys_of(org).sign(claims_for(org))
    header, _, signature = good.split(".")
    for token in (
        "garbage",
        "a.b",
        "a.b.c.d",
        "..",
        "!!!.e30.sig",
        f"{b64(b'[1, 2]')}.e30.sig",
        f"{b64(b'null')}.e30.sig",
        f"{b64(b'not json')}.e30.sig",
        f"{b64(json.dumps({'alg': 'EdDSA', 'kid': ['x']}).encode())}.e30.sig",
        f"{header}.!!!.{signature}",
        f"{header}.{b64(b'[]')}.{signature}",
        "e" * 5000,
    ):
        await assert_refused(org, token)
    await assert_refused(org, "eyJ\xe9.x.y".encode("latin-1"))


# --- refresh, reuse, logout -------------------------------------------------------------------
async def test_refresh_rotates_the_pair(org: Org) -> None:
    """Refreshing returns a new working pair in the same family; the old access token stays
    valid until it expires; the answer is not cached."""
    first = await pair_of(org)
    response = await refresh(org, first["refresh_token"])
    second = json_of(response)
    assert response.headers["cache-control"] == "no-store"
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert parts(second["access_token"])[1]["sid"] == parts(first["access_token"])[1]["sid"]
    await assert_accepted(org, second["access_token"])
    await assert_accepted(org, first["access_token"])
    third = json_of(await refresh(org, second["refresh_token"]))
    await assert_accepted(org, third["access_token"])


async def test_refresh_reuse_revokes_the_whole_family(
    org: Org, caplog: pytest.LogCaptureFixture
) -> None:
    """Presenting a spent refresh token is refused and revokes the family: its newest
    refresh token and every access token from it are refused at once; the security event
    `auth.refresh_reuse` is logged; another sign-in of the same user keeps working."""
    other = await pair_of(org)
    first = await pair_of(org)
    second = json_of(await refresh(org, first["refresh_token"]))
    caplog.set_level(logging.WARNING)
    body = assert_problem(await refresh(org, first["refresh_token"]), 401, "invalid-token")
    assert "already used" in body["detail"]
    for token in (first["access_token"], second["access_token"]):
        await assert_refused(org, token)
    assert_problem(await refresh(org, second["refresh_token"]), 401, "invalid-token")
    [event] = reuse_events(caplog)
    assert event["family_id"] == parts(first["access_token"])[1]["sid"]
    assert event["user_id"] == org.users[ADMIN] and event["security_event"] is True
    await assert_accepted(org, other["access_token"])
    json_of(await refresh(org, other["refresh_token"]))


async def test_a_logged_out_token_is_refused(org: Org, caplog: pytest.LogCaptureFixture) -> None:
    """Logout with the refresh token revokes the family: its access token is refused at once
    and so is the refresh token, which is not mistaken for a stolen-token reuse (no alarm);
    another sign-in is untouched."""
    pair, other = await pair_of(org), await pair_of(org)
    await assert_accepted(org, pair["access_token"])
    await logout(org, refresh_token=pair["refresh_token"])
    assert "revoked" in (await assert_refused(org, pair["access_token"]))["detail"]
    caplog.set_level(logging.WARNING)
    body = assert_problem(await refresh(org, pair["refresh_token"]), 401, "invalid-token")
    assert "already used" not in body["detail"] and reuse_events(caplog) == []
    await assert_accepted(org, other["access_token"])


async def test_logout_with_only_the_bearer_token_revokes_its_family(org: Org) -> None:
    """Logout authenticated by the access token alone revokes its family, refresh included."""
    pair = await pair_of(org)
    await logout(org, bearer=pair["access_token"])
    await assert_refused(org, pair["access_token"])
    assert_problem(await refresh(org, pair["refresh_token"]), 401, "invalid-token")


async def test_a_logout_racing_a_refresh_leaves_no_live_refresh_token(org: Org) -> None:
    """A logout landing between a refresh spending the old token and storing the new one
    (the revocation cannot see a row not yet written) still ends the family: the new refresh
    token is refused, not good for another 30 days."""
    db, config = org.keel.db, org.keel.config
    pair = await pair_of(org)
    async with db.transaction() as session:
        spent = await tokens.redeem_refresh_token(session, config, pair["refresh_token"])
    assert spent.row is not None and spent.user is not None
    await logout(org, refresh_token=pair["refresh_token"])
    family, user = spent.row.family_id, spent.user
    async with db.transaction() as session:
        late = await tokens.issue_tokens(
            session, keys_of(org), config, user, frozenset(), family_id=family
        )
    assert_problem(await refresh(org, late.refresh_token), 401, "invalid-token")


# --- privilege change -------------------------------------------------------------------------
async def test_a_role_change_ends_the_users_tokens(org: Org) -> None:
    """When an admin changes a user's roles, the access and refresh tokens it held are refused;
    a new sign-in carries the new rights."""
    pair = await pair_of(org, "viewer-a@example.com")
    await assert_accepted(org, pair["access_token"], "/api/v1/auth/session")
    async with await org.as_user(ADMIN) as http:
        user = org.users["viewer-a@example.com"]
        json_of(await http.patch(f"/api/v1/users/{user}", json={"roles": ["operator"]}))
    await assert_refused(org, pair["access_token"])
    assert_problem(await refresh(org, pair["refresh_token"]), 401, "invalid-token")
    fresh = await pair_of(org, "viewer-a@example.com")
    assert parts(fresh["access_token"])[1]["scope"] != parts(pair["access_token"])[1]["scope"]


async def test_disabling_a_user_ends_its_tokens(org: Org) -> None:
    """A disabled user's access and refresh tokens are refused and it cannot get new ones."""
    email = "operator-a@example.com"
    pair = await pair_of(org, email)
    async with await org.as_user(ADMIN) as http:
        json_of(await http.patch(f"/api/v1/users/{org.users[email]}", json={"status": "disabled"}))
    await assert_refused(org, pair["access_token"])
    assert_problem(await refresh(org, pair["refresh_token"]), 401, "invalid-token")
    assert_problem(await login(org, email), 401)


# --- key rotation -----------------------------------------------------------------------------
async def test_key_rotation_keeps_old_tokens_until_the_window_ends(org: Org) -> None:
    """After a rotation new tokens carry the new kid and old ones still verify (the old key
    stays in the JWKS); once the retired key is past its window it is neither published nor
    accepted, even for a token verified (and cached) before."""
    keys = keys_of(org)
    used = (await pair_of(org))["access_token"]
    unseen = keys.sign(claims_for(org))
    await assert_accepted(org, used)
    old_kid = keys.current_kid
    new_kid = await keys.rotate()
    assert new_kid != old_kid
    assert await published_kids(org) == [new_kid, old_kid]
    fresh = (await pair_of(org))["access_token"]
    assert parts(fresh)[0]["kid"] == new_kid
    for token in (used, unseen, fresh):
        await assert_accepted(org, token)
    async with org.keel.db.transaction() as session:
        await session.execute(
            update(SigningKey)
            .where(SigningKey.kid == old_kid)
            .values(retired_at=datetime.now(UTC) - timedelta(days=1))
        )
    await keys.load()
    assert await published_kids(org) == [new_kid]
    await assert_refused(org, unseen)
    await assert_refused(org, used)
    await assert_accepted(org, fresh)


# --- across processes -------------------------------------------------------------------------
async def refused_within(app: FastAPI, token: str, seconds: float) -> float:
    """Poll `app` until it refuses `token`; the seconds it took (fails after `seconds`)."""
    start = time.monotonic()
    while (await call(app, token)).status_code != 401:
        assert time.monotonic() - start < seconds, "revocation did not arrive in time"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_revocation_reaches_another_process_within_a_second(org: Org) -> None:
    """A token issued by one process (app) verifies in another on the same database; after
    logout in the first, the second refuses it within the poll interval (1 s, plus slack)."""
    second = create_app(org.keel.config, configure_logs=False)
    async with LifespanManager(second):
        pair = await pair_of(org)
        assert (await call(second, pair["access_token"])).status_code == 200
        await logout(org, refresh_token=pair["refresh_token"])
        await assert_refused(org, pair["access_token"])
        await refused_within(second, pair["access_token"], 1.5)


@pytest.fixture
async def redis_org(make_config: Callable[..., Config], redis_url: str) -> AsyncIterator[Org]:
    """The organisation with Redis configured."""
    config = make_config(rate_limit_login="10000/minute", redis_url=redis_url)
    async for value in build_org(config):
        yield value


async def test_revocation_reaches_another_process_through_redis(
    redis_org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Redis, the nudge alone carries a revocation to another process: that process
    polls only once a minute, yet refuses the logged-out token within a second or so."""
    monkeypatch.setattr(runtime_module, "RevocationSet", partial(RevocationSet, interval=60.0))
    application = create_app(redis_org.keel.config, configure_logs=False)
    async with LifespanManager(application):
        revocations = identity_runtime(application.state.keel).revocations
        assert revocations.interval == 60.0 and revocations.redis is not None
        pair = await pair_of(redis_org)
        assert (await call(application, pair["access_token"])).status_code == 200
        for _ in range(100):  # both processes are listening
            [(_, listeners)] = await revocations.redis.pubsub_numsub(CHANNEL)
            if listeners >= 2:
                break
            await asyncio.sleep(0.02)
        await logout(redis_org, refresh_token=pair["refresh_token"])
        await refused_within(application, pair["access_token"], 1.5)


# --- the verifier's cache ---------------------------------------------------------------------
async def own_verifier(org: Org, **options: Any) -> TokenVerifier:
    """A verifier with its own loaded keys and an empty, unstarted revocation set."""
    config, db = org.keel.config, org.keel.db
    keys = SigningKeys(db, keyring=org.keel.keyring, window=timedelta(minutes=16))
    await keys.load()
    options = {"leeway": config.jwt_leeway_seconds, **options}
    audience, issuer = config.jwt_audience, config.token_issuer
    return TokenVerifier(keys, RevocationSet(db), issuer=issuer, audience=audience, **options)


async def test_the_verifier_caches_claims_but_still_checks_revocation(
    org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token seen before is answered from the cache (no signature check), yet a revocation
    of its jti or family, or the withdrawal of its key, refuses it."""
    verifier = await own_verifier(org)
    token = keys_of(org).sign(claims_for(org, sid="family-1"))
    claims = await verifier.verify(token)
    assert claims.sub == org.users[ADMIN] and claims.scope == {"users:read"}

    async def no_crypto(token: str) -> Any:
        raise AssertionError("the signature was checked again")

    monkeypatch.setattr(verifier, "_verify_signature", no_crypto)
    assert await verifier.verify(token) is claims
    verifier.revocations.family["family-1"] = time.time() + 60
    with pytest.raises(InvalidToken, match="revoked"):
        await verifier.verify(token)
    del verifier.revocations.family["family-1"]
    verifier.revocations.jti[claims.jti] = time.time() + 60
    with pytest.raises(InvalidToken, match="revoked"):
        await verifier.verify(token)
    del verifier.revocations.jti[claims.jti]
    verifier.keys.public = {}
    with pytest.raises(InvalidToken, match="no longer accepted"):
        await verifier.verify(token)


async def test_the_verifier_cache_is_bounded(org: Org) -> None:
    """The cache never holds more than `cache_size` tokens; an evicted one verifies again."""
    verifier = await own_verifier(org, cache_size=3)
    signed = [keys_of(org).sign(claims_for(org)) for _ in range(8)]
    for token in signed:
        await verifier.verify(token)
        assert len(verifier._cache) <= 3
    assert signed[0] not in verifier._cache
    assert (await verifier.verify(signed[0])).jti == parts(signed[0])[1]["jti"]


async def test_an_expired_cached_token_is_refused(
    org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached token is refused once its `exp` (plus leeway) has passed, and dropped."""
    verifier = await own_verifier(org, leeway=5)
    now = time.time()
    token = keys_of(org).sign(claims_for(org, exp=int(now) + 60))
    await verifier.verify(token)
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: now + 64))
    await verifier.verify(token)  # within the leeway
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: now + 66))
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token)
    assert token not in verifier._cache


# --- bad input --------------------------------------------------------------------------------
async def test_bad_refresh_requests_are_refused_and_change_nothing(org: Org) -> None:
    """A refresh without a body, with a too-short or unknown token is a 4xx problem; no row
    is written and the user's real refresh token still works."""
    pair = await pair_of(org)
    before = (await count(org, RefreshToken), await count(org, Revocation))
    async with org.client() as http:
        assert_problem(await http.post("/api/v1/auth/refresh"), 422)
        assert_problem(await http.post("/api/v1/auth/refresh", json={}), 422)
        short = await http.post("/api/v1/auth/refresh", json={"refresh_token": "short"})
        assert_problem(short, 422)
    unknown = await refresh(org, "keel_rt_" + "A" * 43)
    assert_problem(unknown, 401, "invalid-token")
    assert (await count(org, RefreshToken), await count(org, Revocation)) == before
    json_of(await refresh(org, pair["refresh_token"]))


async def test_non_bearer_or_empty_authorization_is_refused(org: Org) -> None:
    """An empty `Bearer` is 401 invalid_token; another scheme (`Basic …`) authenticates
    nobody, so a protected route answers 401."""
    for value in ("Bearer", "Bearer    ", "Basic YWRtaW46YWRtaW4=", "Token abc"):
        async with org.client(authorization=value) as http:
            response = await http.get(PROTECTED)
        assert_problem(response, 401)
        if value.startswith("Bearer"):
            assert response.headers["www-authenticate"] == INVALID
