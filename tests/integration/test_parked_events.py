"""One bad event never stops the cloud: the projector parks what it cannot decode or apply.

Bad events are published straight onto the event stream, as a buggy or hostile writer
would, between good ones written through the API; real NATS, real Postgres, the real
projector and API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from nebula_core.contract import subjects
from nebula_core.contract.events import ProjectCreated, ProjectMemberSet, ProjectUpdated, encode_event
from nebula_core.contract.types import Quotas
from nebula_core.domain import Project
from nebula_core.eventstore import EventStore
from nebula_core.projections.checkpoint import checkpoint
from nebula_core.projections.handlers import HANDLERS
from nebula_core.projections.projector import apply_batch, replay
from tests.integration.conftest import Cloud
from tests.integration.test_projector import CODEC, last_seq, raw_history
from tests.support import eventually


def project_created(project_id: uuid.UUID, name: str) -> bytes:
    return encode_event(
        ProjectCreated(
            id=project_id, version=1, at=datetime.now(UTC), name=name, description="", tags={}, quotas=Quotas()
        )
    )


async def publish(js: JetStreamContext, aggregate: str, aggregate_id: uuid.UUID, payload: bytes) -> int:
    """Append `payload` as it is, bypassing every check of the event store; its sequence."""
    return (await js.publish(f"nebula.evt.{aggregate}.{aggregate_id}", payload)).seq


async def parked_rows(pool: asyncpg.Pool) -> dict[int, tuple[str, bytes, str]]:
    rows = await pool.fetch("SELECT seq, subject, payload, error FROM parked_events ORDER BY seq")
    return {r["seq"]: (r["subject"], r["payload"], r["error"]) for r in rows}


async def metric(cloud: Cloud, name: str) -> float | None:
    async with cloud.session.get(cloud.base + "/metrics") as response:
        text = await response.text()
    values = [line.split()[1] for line in text.splitlines() if line.split(" ")[0] == name]
    return float(values[0]) if values else None


async def health(cloud: Cloud) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with cloud.session.get(cloud.base + "/healthz") as response:
        return response.status, await response.json()


async def projected(cloud: Cloud) -> bool:
    return await checkpoint(cloud.pool) >= await last_seq(cloud.js)


async def test_bad_events_are_parked_and_the_events_after_them_are_projected(cloud: Cloud) -> None:
    before = await cloud.project("before")
    stranger = uuid.uuid4()
    bad = {
        "malformed": await publish(cloud.js, "project", uuid.uuid4(), b'{"type": "project.created", "id": '),
        "nul": await publish(cloud.js, "project", (nul_id := uuid.uuid4()), project_created(nul_id, "evil\x00name")),
        "unknown": await publish(
            cloud.js,
            "project",
            uuid.uuid4(),
            b'{"type": "project.teleported", "id": "%s", "version": 2, "at": "2026-01-01T00:00:00Z"}'
            % str(uuid.uuid4()).encode(),
        ),
        # Its handler writes the membership, then fails on the project's version (out of
        # range for its column): the membership must not stay, half-applied.
        "half": await publish(
            cloud.js,
            "project",
            stranger,
            encode_event(
                ProjectMemberSet(
                    id=stranger, version=1 << 40, at=datetime.now(UTC), user_id=uuid.uuid4(), role="member"
                )
            ),
        ),
    }
    after = await cloud.project("after")
    status, renamed = await cloud.admin.call("PATCH", f"/v1/projects/{before}", json={"description": "still here"})
    assert status == 200, renamed

    await eventually(lambda: projected(cloud))
    status, shown = await cloud.admin.get(f"/v1/projects/{after}")
    assert status == 200 and shown["name"] == "after"
    status, shown = await cloud.admin.get(f"/v1/projects/{before}")
    assert status == 200 and shown["description"] == "still here"
    names = {r["name"] for r in await cloud.pool.fetch("SELECT name FROM projects")}
    assert names == {"before", "after"}
    assert not await cloud.pool.fetchval("SELECT count(*) FROM memberships WHERE project_id = $1", stranger)

    rows = await parked_rows(cloud.pool)
    assert sorted(rows) == sorted(bad.values())
    assert all(subject.startswith("nebula.evt.project.") for subject, _, _ in rows.values())
    assert rows[bad["malformed"]][1] == b'{"type": "project.created", "id": '  # the payload, byte for byte
    assert "DecodeError" in rows[bad["malformed"]][2]
    assert "CharacterNotInRepertoire" in rows[bad["nul"]][2]
    assert "unknown event type 'project.teleported'" in rows[bad["unknown"]][2]
    assert "int32" in rows[bad["half"]][2]

    # Every message, parked ones included, is acknowledged: none is redelivered forever.
    info = await cloud.js.consumer_info(subjects.EVENTS_STREAM, subjects.PROJECTOR_CONSUMER)
    assert info.num_ack_pending == 0
    assert await metric(cloud, "nebula_parked_events") == 4
    assert await metric(cloud, "nebula_events_parked_total") == 4
    assert await health(cloud) == (200, {"status": "degraded", "nats": "ok", "postgres": "ok", "parked_events": 4})

    # A replay tries them again, and parks the same ones, with the same errors.
    tables = await cloud.pool.fetch("SELECT id, name, description, version, last_seq FROM projects ORDER BY name")
    assert await replay(cloud.js, cloud.pool) == await last_seq(cloud.js)
    assert await parked_rows(cloud.pool) == rows
    assert await cloud.pool.fetch("SELECT id, name, description, version, last_seq FROM projects ORDER BY name") == (
        tables
    )
    assert await metric(cloud, "nebula_parked_events") == 4
    assert await metric(cloud, "nebula_events_parked_total") == 8  # a counter: the replay parked them again
    assert (await health(cloud))[1]["parked_events"] == 4


async def test_a_cloud_without_parked_events_is_healthy_and_says_so(cloud: Cloud) -> None:
    await cloud.project()
    await eventually(lambda: projected(cloud))
    assert await health(cloud) == (200, {"status": "ok", "nats": "ok", "postgres": "ok"})
    assert await metric(cloud, "nebula_parked_events") == 0
    assert await metric(cloud, "nebula_events_parked_total") == 0


async def test_a_handler_that_fails_half_way_leaves_nothing_behind(
    js: JetStreamContext, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EventStore(js, CODEC)
    project = Project(name="kept", description="", tags={}, quotas=Quotas())
    await store.save(project)
    project.update(name="renamed")
    await store.save(project)
    history = await raw_history(js)
    real = HANDLERS[ProjectUpdated]

    async def buggy(conn: asyncpg.Connection, event: ProjectUpdated, seq: int) -> None:
        await real(conn, event, seq)
        raise KeyError("a bug after the write")

    async with pool.acquire() as conn:
        with monkeypatch.context() as patched:
            patched.setitem(HANDLERS, ProjectUpdated, buggy)
            result = await apply_batch(conn, history)

    assert (result.applied, result.parked, result.checkpoint) == (2, 1, history[-1][0])
    assert await pool.fetchval("SELECT name FROM projects WHERE id = $1", project.id) == "kept"
    assert (await parked_rows(pool))[history[-1][0]][2] == "KeyError: 'a bug after the write'"


async def test_a_failure_of_the_database_is_not_the_events_fault_and_is_not_parked(
    js: JetStreamContext, pool: asyncpg.Pool
) -> None:
    store = EventStore(js, CODEC)
    await store.save(Project(name="p", description="", tags={}, quotas=Quotas()))
    history = await raw_history(js)
    await pool.execute("ALTER TABLE projects RENAME TO projects_elsewhere")  # an operator's mistake

    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.UndefinedTableError):
            await apply_batch(conn, history)

    assert await checkpoint(pool) == 0
    assert not await parked_rows(pool)


async def test_replay_parks_what_the_projector_would_park(js: JetStreamContext, pool: asyncpg.Pool) -> None:
    store = EventStore(js, CODEC)
    await store.save(Project(name="good", description="", tags={}, quotas=Quotas()))
    poison = await publish(js, "project", (bad_id := uuid.uuid4()), project_created(bad_id, "nul\x00"))
    await store.save(Project(name="also-good", description="", tags={}, quotas=Quotas()))

    reached = await replay(js, pool)

    assert reached == await last_seq(js) == await checkpoint(pool)
    assert {r["name"] for r in await pool.fetch("SELECT name FROM projects")} == {"good", "also-good"}
    assert list(await parked_rows(pool)) == [poison]
    assert msgspec.json.decode((await parked_rows(pool))[poison][1])["name"] == "nul\x00"
    # A second replay does not pile up a second copy: the table is emptied and refilled.
    await replay(js, pool)
    assert list(await parked_rows(pool)) == [poison]


async def test_projection_goes_on_while_bad_events_keep_coming(cloud: Cloud) -> None:
    for i in range(5):
        await publish(cloud.js, "instance", uuid.uuid4(), b"\xff\xfe not even UTF-8")
        await cloud.project(f"p{i}")
    await eventually(lambda: projected(cloud))
    assert await cloud.pool.fetchval("SELECT count(*) FROM projects") == 5
    assert len(await parked_rows(cloud.pool)) == 5
