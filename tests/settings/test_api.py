"""`/api/v1/settings` on SQLite and PostgreSQL: reads, validated and audited writes,
history and rollback, permissions, tenant isolation, secrets and pending restarts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from keel import Config
from keel.settings import Setting, declare
from keel.settings.spec import forget
from tests.identity.support import Org, build_org, json_of

OWNER = "owner@example.com"
SECRET = "hunter2-super-secret-value"


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


async def test_set_read_history_rollback_and_unset(
    org: Org, test_settings: dict[str, Setting[Any]]
) -> None:
    """An admin changes a setting: the answer, the list, the handle and the history agree;
    rollback restores an earlier value and DELETE goes back to the default."""
    async with await org.as_user(OWNER) as http:
        listed = json_of(await http.get("/api/v1/settings"))
        keys = {item["key"]: item for item in listed["items"]}
        assert {"jobs.prune_interval", "deps.probes_paused", "test.count"} <= set(keys)
        assert keys["test.count"]["source"] == "default" and keys["test.count"]["value"] == 5
        assert keys["test.every"]["min"] == "1s" and keys["test.mode"]["choices"] == ["sim", "live"]

        first = json_of(
            await http.put("/api/v1/settings/test.every", json={"value": "5m", "reason": "r1"})
        )
        assert (first["value"], first["source"]) == ("300s", "override")
        assert test_settings["test.every"].value.total_seconds() == 300
        json_of(await http.put("/api/v1/settings/test.every", json={"value": 60, "reason": "r2"}))
        history = json_of(await http.get("/api/v1/settings/test.every/history"))["items"]
        assert [(h["before"], h["after"], h["reason"]) for h in history] == [
            ("300s", "60s", "r2"),
            (None, "300s", "r1"),
        ]
        assert history[0]["actor"] in {OWNER, org.users[OWNER]}

        rolled = json_of(
            await http.post(
                "/api/v1/settings/test.every/rollback",
                json={"change_id": history[1]["id"], "reason": "undo"},
            )
        )
        assert rolled["value"] == "300s"
        assert rolled["last_change"]["action"] == "rollback"

        unset = json_of(await http.delete("/api/v1/settings/test.every?reason=done"))
        assert (unset["value"], unset["source"]) == ("30s", "default")
        events = json_of(await http.get("/api/v1/audit/events?action=setting."))["items"]
        assert [e["action"] for e in events][:4] == [
            "setting.unset",
            "setting.rollback",
            "setting.set",
            "setting.set",
        ]
        assert events[2]["changes"] == {"value": ["300s", "60s"]}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PUT", "/api/v1/settings/test.count", {"value": "many", "reason": "x"}, 422),
        ("PUT", "/api/v1/settings/test.count", {"value": 0, "reason": "x"}, 422),
        ("PUT", "/api/v1/settings/test.count", {"value": 1000, "reason": "x"}, 422),
        ("PUT", "/api/v1/settings/test.count", {"value": True, "reason": "x"}, 422),
        ("PUT", "/api/v1/settings/test.count", {"value": 3}, 422),
        ("PUT", "/api/v1/settings/test.count", {"value": 3, "reason": ""}, 422),
        ("PUT", "/api/v1/settings/test.mode", {"value": "prod", "reason": "x"}, 422),
        ("PUT", "/api/v1/settings/test.limits", {"value": {"burst": -1}, "reason": "x"}, 422),
        ("PUT", "/api/v1/settings/test.count", {"value": 3, "reason": "x", "tenant": "t"}, 422),
        ("PUT", "/api/v1/settings/test.quota", {"value": 3, "reason": "x", "tenant": ""}, 422),
        (
            "PUT",
            "/api/v1/settings/test.quota",
            {"value": 3, "reason": "x", "tenant": "t" * 37},
            422,
        ),
        ("DELETE", "/api/v1/settings/test.quota?reason=x&tenant=", None, 422),
        ("GET", "/api/v1/settings/test.quota?tenant=", None, 422),
        ("PUT", "/api/v1/settings/test.unknown", {"value": 3, "reason": "x"}, 404),
        ("DELETE", "/api/v1/settings/test.count", None, 422),
        ("DELETE", "/api/v1/settings/test.unknown?reason=x", None, 404),
        ("GET", "/api/v1/settings/test.unknown", None, 404),
        ("GET", "/api/v1/settings/test.unknown/history", None, 404),
        (
            "POST",
            "/api/v1/settings/test.count/rollback",
            {"change_id": "01900000-0000-7000-8000-000000000000", "reason": "x"},
            404,
        ),
    ],
)
async def test_bad_requests_are_problems_and_change_nothing(
    org: Org, method: str, path: str, body: Any, status: int
) -> None:
    """Bad types, out-of-bounds values, missing reasons and unknown keys answer problem+json
    and leave the setting, its history and the audit trail untouched."""
    async with await org.as_user(OWNER) as http:
        json_of(await http.put("/api/v1/settings/test.count", json={"value": 7, "reason": "x"}))
        audit_before = json_of(await http.get("/api/v1/audit/events?action=setting."))["items"]
        response = await http.request(method, path, json=body)
        _problem(response, status)
        after = json_of(await http.get("/api/v1/settings/test.count"))
        assert after["value"] == 7
        assert len(json_of(await http.get("/api/v1/settings/test.count/history"))["items"]) == 1
        audit_after = json_of(await http.get("/api/v1/audit/events?action=setting."))["items"]
        assert len(audit_after) == len(audit_before)


async def test_permissions(org: Org) -> None:
    """A viewer may not read settings; an operator may read but not write."""
    async with await org.as_user("viewer-a@example.com") as http:
        _problem(await http.get("/api/v1/settings"), 403)
    async with await org.as_user("operator-a@example.com") as http:
        json_of(await http.get("/api/v1/settings"))
        _problem(
            await http.put("/api/v1/settings/test.quota", json={"value": 1, "reason": "x"}), 403
        )
    async with org.client() as http:
        _problem(await http.get("/api/v1/settings"), 401)


async def test_tenants_see_and_change_only_their_own_overrides(
    org: Org, test_settings: dict[str, Setting[Any]]
) -> None:
    """A tenant admin sets its tenant's override of a per-tenant setting; another tenant does
    not see it; deployment-wide settings and other tenants' overrides are 404 to both."""
    acme, bolt = org.tenants["acme"], org.tenants["bolt"]
    async with await org.as_user("admin-a@example.com") as http:
        listed = json_of(await http.get("/api/v1/settings"))["items"]
        assert {item["key"] for item in listed} == {"test.quota"}
        changed = json_of(
            await http.put("/api/v1/settings/test.quota", json={"value": 3, "reason": "ours"})
        )
        assert (changed["value"], changed["source"], changed["tenant"]) == (3, "tenant", acme)
        for response in (
            await http.get("/api/v1/settings/test.count"),
            await http.put("/api/v1/settings/test.count", json={"value": 3, "reason": "x"}),
            await http.get(f"/api/v1/settings/test.quota?tenant={bolt}"),
            await http.put(
                "/api/v1/settings/test.quota", json={"value": 4, "reason": "x", "tenant": bolt}
            ),
            await http.delete(f"/api/v1/settings/test.quota?reason=x&tenant={bolt}"),
        ):
            _problem(response, 404)
    assert test_settings["test.quota"].get(acme) == 3
    assert test_settings["test.quota"].get(bolt) == 10
    async with await org.as_user("admin-b@example.com") as http:
        mine = json_of(await http.get("/api/v1/settings/test.quota"))
        assert (mine["value"], mine["source"], mine["last_change"]) == (10, "default", None)
        assert json_of(await http.get("/api/v1/settings/test.quota/history"))["items"] == []
        text = (await http.get("/api/v1/settings")).text
        assert acme not in text and "ours" not in text
    async with await org.as_user(OWNER) as http:
        seen = json_of(await http.get(f"/api/v1/settings/test.quota?tenant={acme}"))
        assert (seen["value"], seen["source"]) == (3, "tenant")
        assert json_of(await http.get("/api/v1/settings/test.quota"))["value"] == 10
        history = json_of(await http.get("/api/v1/settings/test.quota/history"))["items"]
        assert [h["tenant"] for h in history] == [acme]


async def test_secrets_are_never_echoed(
    org: Org, test_settings: dict[str, Setting[Any]], capfd: pytest.CaptureFixture[str]
) -> None:
    """A secret's value reaches the code but never an answer, the history, the audit trail
    or the logs."""
    async with await org.as_user(OWNER) as http:
        answers = [
            await http.put("/api/v1/settings/test.token", json={"value": SECRET, "reason": "x"}),
            await http.put(
                "/api/v1/settings/test.token", json={"value": SECRET + "2", "reason": "y"}
            ),
            await http.get("/api/v1/settings"),
            await http.get("/api/v1/settings/test.token"),
            await http.get("/api/v1/settings/test.token/history"),
            await http.get("/api/v1/audit/events"),
            await http.put(
                "/api/v1/settings/test.token", json={"value": {"v": SECRET}, "reason": "bad"}
            ),
        ]
        history = json_of(answers[4])["items"]
        rolled = await http.post(
            "/api/v1/settings/test.token/rollback",
            json={"change_id": history[-1]["id"], "reason": "back"},
        )
        answers.append(rolled)
    assert test_settings["test.token"].value == SECRET
    assert json_of(answers[3])["value"] == "***"
    assert history[0]["before"] == "***" and history[0]["after"] == "***"
    assert answers[6].status_code == 422
    for response in answers:
        assert SECRET not in response.text
    logs = capfd.readouterr()
    assert SECRET not in logs.out + logs.err


async def test_pending_restart_shows_in_the_list_and_readiness(org: Org) -> None:
    """A changed restart_required setting is listed as pending to a deployment admin; a
    tenant's account does not learn its name, and the public /readyz gives only a count
    without failing."""
    async with await org.as_user(OWNER) as http:
        changed = json_of(
            await http.put("/api/v1/settings/test.workers", json={"value": 8, "reason": "x"})
        )
        assert (changed["value"], changed["pending_restart"], changed["pending_value"]) == (
            4,
            True,
            8,
        )
        listed = json_of(await http.get("/api/v1/settings"))
        assert listed["pending_restart"] == ["test.workers"]
        ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    check = ready.json()["checks"]["settings"]
    assert check["ok"] is True and check["info"] == "1 setting pending restart"
    assert "test.workers" not in ready.text
    async with await org.as_user("admin-a@example.com") as http:
        tenants_view = await http.get("/api/v1/settings")
    assert json_of(tenants_view)["pending_restart"] == []
    assert "test.workers" not in tenants_view.text


async def test_json_settings_round_trip(org: Org, test_settings: dict[str, Setting[Any]]) -> None:
    """A JSON setting is validated by its model and shown as JSON."""
    async with await org.as_user(OWNER) as http:
        body = {"value": {"burst": 9, "names": ["a", "b"]}, "reason": "x"}
        shown = json_of(await http.put("/api/v1/settings/test.limits", json=body))
    assert shown["value"] == {"burst": 9, "names": ["a", "b"]}
    assert test_settings["test.limits"].value.burst == 9
    assert json.dumps(shown["default"]) == json.dumps({"burst": 2, "names": []})


ODD_VALUES: list[Any] = [
    None,
    [],
    {},
    "",
    "P99999999999D",
    "PT-5S",
    "1e309",
    1e308,
    -0.0,
    2**70,
    -(2**70),
    "\x00",
    "9" * 40,
    {"burst": 2**70},
    [1, [2, [3]]],
    "ms",
    "1.5.5s",
]


async def test_odd_values_never_cause_a_server_error(make_config: Callable[..., Config]) -> None:
    """Hostile values for every setting answer 2xx or 4xx problem+json, never 5xx; a tenant's
    rollback to another tenant's change is refused."""
    config = make_config(rate_limit_enabled=False, rate_limit_login="10000/minute")
    async for org in build_org(config):
        await _odd_values(org)


async def _odd_values(org: Org) -> None:
    async with await org.as_user(OWNER) as http:
        keys = [item["key"] for item in json_of(await http.get("/api/v1/settings"))["items"]]
        for key in keys:
            for value in ODD_VALUES:
                response = await http.put(
                    f"/api/v1/settings/{key}", json={"value": value, "reason": "fuzz"}
                )
                assert response.status_code < 500, (key, value, response.text)
                assert response.status_code != 429
                if response.status_code >= 400:
                    _problem(response, response.status_code)
        bolt_change = json_of(
            await http.put(
                "/api/v1/settings/test.quota",
                json={"value": 1, "reason": "x", "tenant": org.tenants["bolt"]},
            )
        )["last_change"]["id"]
    async with await org.as_user("admin-a@example.com") as http:
        _problem(
            await http.post(
                "/api/v1/settings/test.quota/rollback",
                json={"change_id": bolt_change, "reason": "steal"},
            ),
            404,
        )


class Credentials(BaseModel):
    """A secret JSON setting's model whose secret is a dict key."""

    tokens: dict[str, int]


async def test_invalid_secret_values_are_not_echoed_in_problems(
    org: Org, caplog: pytest.LogCaptureFixture
) -> None:
    """A 422 for a secret setting names neither the value nor a location or validator
    message that holds it (a dict key, a quoting validator)."""

    def echoing(value: str) -> None:
        if value:
            raise ValueError(f"bad token {value!r}")

    declare("spec.creds", Credentials, default={"tokens": {}}, secret=True)
    declare("spec.checked", str, default="", secret=True, validator=echoing)
    try:
        async with await org.as_user(OWNER) as http:
            for key, value in (
                ("spec.creds", {"tokens": {SECRET: "many"}}),
                ("spec.checked", SECRET),
            ):
                response = await http.put(
                    f"/api/v1/settings/{key}", json={"value": value, "reason": "x"}
                )
                body = _problem(response, 422)
                assert SECRET not in response.text, body
                assert "withheld" in response.text
    finally:
        forget("spec.creds")
        forget("spec.checked")
    assert SECRET not in caplog.text


async def test_rolling_back_to_a_value_stored_while_secret_is_refused(org: Org) -> None:
    """A setting declared secret when a change was made and plain now cannot be rolled back
    to that encrypted change: 409 problem+json, nothing written, never a server error."""
    declare("spec.rotated", str, default="", secret=True)
    try:
        async with await org.as_user(OWNER) as http:
            json_of(
                await http.put(
                    "/api/v1/settings/spec.rotated", json={"value": SECRET, "reason": "x"}
                )
            )
            change = json_of(await http.get("/api/v1/settings/spec.rotated/history"))["items"][0]
            forget("spec.rotated")
            declare("spec.rotated", str, default="")
            response = await http.post(
                "/api/v1/settings/spec.rotated/rollback",
                json={"change_id": change["id"], "reason": "back"},
            )
            _problem(response, 409)
            assert SECRET not in response.text
            history = json_of(await http.get("/api/v1/settings/spec.rotated/history"))["items"]
            assert len(history) == 1
    finally:
        forget("spec.rotated")
