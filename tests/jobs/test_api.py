"""The jobs API: list, show (attempts, logs), cancel, retry, and the SSE stream with resume."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from keel.audit import Actor, bind_actor, reset_actor
from keel.jobs import JobContext, enqueue, job
from tests.identity.support import Org, json_of
from tests.protection.test_guard import assert_problem


@job("test.api.chatty")
async def chatty(ctx: JobContext, lines: int) -> str:
    for n in range(lines):
        ctx.log.info(f"line {n}")  # noqa: G004 - the job's stored log, not logging
        ctx.progress(n + 1, lines)
    return "done"


async def _enqueue(org: Org, email: str, kind: str, args: dict[str, Any], **more: Any) -> str:
    tenant = org.tenants["acme"] if email.endswith("-a@example.com") else None
    token = bind_actor(Actor("user", org.users[email], email, tenant))
    try:
        async with org.keel.db.transaction() as session:
            return (await enqueue(session, kind, args, **more)).id
    finally:
        reset_actor(token)


async def _done(org: Org, http: Any, job_id: str) -> dict[str, Any]:
    for _ in range(200):
        data = json_of(await http.get(f"/api/v1/jobs/{job_id}"))
        if data["state"] in ("completed", "discarded", "cancelled"):
            return data  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError("the job did not finish")


async def test_list_show_and_permissions(org: Org) -> None:
    """An operator sees its tenant's jobs with attempts and logs; a viewer may read but not
    cancel; an anonymous caller gets 401."""
    job_id = await _enqueue(org, "admin-a@example.com", "test.api.chatty", {"lines": 3})
    async with await org.as_user("operator-a@example.com") as http:
        done = await _done(org, http, job_id)
        assert done["result"] == "done" and done["attempts"][0]["outcome"] == "completed"
        assert [line["message"] for line in done["logs"]] == ["line 0", "line 1", "line 2"]
        listed = json_of(await http.get("/api/v1/jobs", params={"state": "completed"}))
        assert [item["id"] for item in listed["items"]] == [job_id]
        assert_problem(await http.get("/api/v1/jobs", params={"state": "sleeping"}), 422)
    async with await org.as_user("viewer-a@example.com") as http:
        assert (await http.get(f"/api/v1/jobs/{job_id}")).status_code == 200
        assert_problem(await http.post(f"/api/v1/jobs/{job_id}/cancel"), 403)
    async with await org.as_user("admin-b@example.com") as http:
        assert_problem(await http.get(f"/api/v1/jobs/{job_id}"), 404)
        assert json_of(await http.get("/api/v1/jobs"))["items"] == []
    async with org.client() as http:
        assert_problem(await http.get("/api/v1/jobs"), 401)


async def test_cancel_and_retry_over_http_are_audited(org: Org) -> None:
    """Cancel a scheduled job, retry it, watch it complete; both actions are in the trail."""
    later = datetime.now(UTC) + timedelta(hours=1)
    job_id = await _enqueue(
        org, "admin-a@example.com", "test.api.chatty", {"lines": 1}, run_at=later
    )
    async with await org.as_user("operator-a@example.com") as http:
        cancelled = json_of(await http.post(f"/api/v1/jobs/{job_id}/cancel"))
        assert cancelled["state"] == "cancelled"
        assert_problem(await http.post(f"/api/v1/jobs/{job_id}/cancel"), 409)
        retried = json_of(await http.post(f"/api/v1/jobs/{job_id}/retry"))
        assert retried["state"] == "available"
        assert (await _done(org, http, job_id))["state"] == "completed"
    from keel.audit.service import seal_all

    await seal_all(org.keel.db)
    async with await org.as_user("owner@example.com") as http:
        actions = [
            e["action"]
            for e in json_of(
                await http.get("/api/v1/audit/events", params={"resource_id": job_id})
            )["items"]
        ]
    assert actions == ["job.retry", "job.cancel"]


async def test_event_stream_and_resume(org: Org) -> None:
    """The SSE stream carries log lines with ids and state changes until the job ends; a
    reconnect with Last-Event-ID gets only the lines after it."""
    job_id = await _enqueue(org, "admin-a@example.com", "test.api.chatty", {"lines": 5})
    async with await org.as_user("operator-a@example.com") as http:
        await _done(org, http, job_id)
        stream = await http.get(f"/api/v1/jobs/{job_id}/events")
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = _parse(stream.text)
        logs = [e for e in events if e["event"] == "log"]
        assert [e["data"]["message"] for e in logs] == [f"line {n}" for n in range(5)]
        assert events[-1]["event"] == "state" and events[-1]["data"]["state"] == "completed"
        resumed = await http.get(
            f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": logs[2]["id"]}
        )
        again = [e["data"]["message"] for e in _parse(resumed.text) if e["event"] == "log"]
        assert again == ["line 3", "line 4"]


def _parse(text: str) -> list[dict[str, Any]]:
    import json

    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append(
                {
                    "event": fields["event"],
                    "id": fields.get("id"),
                    "data": json.loads(fields["data"]),
                }
            )
    return events


async def test_job_metrics_are_exported(org: Org) -> None:
    """Run time, wait and queue depth appear on /metrics."""
    job_id = await _enqueue(org, "admin-a@example.com", "test.api.chatty", {"lines": 1})
    async with await org.as_user("operator-a@example.com") as http:
        await _done(org, http, job_id)
    async with org.client() as http:
        text = (await http.get("/metrics")).text
    assert 'keel_job_run_seconds_count{kind="test.api.chatty",outcome="completed"} 1.0' in text
    # At least this job's wait (the dependency monitor's probe jobs may share the queue).
    waits = re.search(r'keel_job_wait_seconds_count\{queue="default"\} ([0-9.]+)', text)
    assert waits is not None and float(waits.group(1)) >= 1.0
    assert "# TYPE keel_jobs gauge" in text
