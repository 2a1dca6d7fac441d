"""Deleting a project takes the lock instance creators take: an instance is never left in a
deleted project, whatever the interleaving. What was left in one before (by an older
version, or by hand) stays visible to cloud admins, who can still delete it."""

from __future__ import annotations

import asyncio
import uuid

from nebula_core.contract import subjects
from nebula_core.contract.events import InstanceCreated, decode_known
from nebula_core.domain import AGGREGATES, Project
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from tests.integration.conftest import Cloud
from tests.integration.test_api import instance_body
from tests.support import eventually

ROOMY = {"instances": 100, "vcpus": 100, "ram_mb": 100_000, "disk_gb": 100}
CREATORS = 12


async def _created_in(cloud: Cloud, project_id: str) -> int:
    """How many instances the event log says were created in the project."""
    info = await cloud.js.stream_info(subjects.EVENTS_STREAM)
    count = 0
    for seq in range(1, info.state.last_seq + 1):
        raw = await cloud.js.get_msg(subjects.EVENTS_STREAM, seq=seq)
        event = decode_known(raw.data) if raw.data is not None else None
        count += isinstance(event, InstanceCreated) and str(event.project_id) == project_id
    return count


async def test_a_project_deleted_among_concurrent_creates_never_keeps_an_instance(cloud: Cloud) -> None:
    await cloud.image()
    user_id, member = await cloud.user("builder")
    for attempt in range(4):
        project_id = await cloud.project(f"race-{attempt}", quotas=ROOMY)
        await cloud.member(project_id, user_id, "member")
        creates = [member.post("/v1/instances", instance_body(project_id, name=f"vm-{i}")) for i in range(CREATORS)]
        # The delete goes out among the creates: before, between or after them.
        at = attempt * CREATORS // 3
        results = await asyncio.gather(
            *creates[:at], cloud.admin.call("DELETE", f"/v1/projects/{project_id}"), *creates[at:]
        )
        (deleted, body), created = results[at], [*results[:at], *results[at + 1 :]]
        held = await cloud.pool.fetchval(
            "SELECT count(*) FROM instances WHERE project_id = $1 AND state <> 'deleted'", uuid.UUID(project_id)
        )
        if deleted == 204:
            assert held == 0
            assert {status for status, _ in created} <= {404}, created
            assert (await cloud.admin.get(f"/v1/projects/{project_id}"))[0] == 404
        else:
            assert deleted == 409 and body["code"] == "conflict", body
            assert held == sum(status == 202 for status, _ in created) > 0
            assert (await cloud.admin.get(f"/v1/projects/{project_id}"))[0] == 200
        # The event log agrees with the read models: every instance created is one counted.
        assert await _created_in(cloud, project_id) == held


async def test_an_instance_left_in_a_deleted_project_is_seen_and_deleted_by_admins_only(cloud: Cloud) -> None:
    project_id = await cloud.project("old")
    await cloud.image()
    user_id, member = await cloud.user("tenant")
    await cloud.member(project_id, user_id, "member")
    status, instance = await member.post("/v1/instances", instance_body(project_id))
    assert status == 202, instance
    # As an older version could leave it: the project deleted behind its instance's back.
    store = EventStore(cloud.js, Codec(*AGGREGATES))
    await store.change(Project, uuid.UUID(project_id), lambda p: p.delete(), actor="test")

    async def project_gone() -> bool:
        return (await cloud.admin.get(f"/v1/projects/{project_id}"))[0] == 404

    await eventually(project_gone)
    path = f"/v1/instances/{instance['id']}"

    assert (await member.get(path))[0] == 404
    assert (await member.call("DELETE", path))[0] == 404
    status, seen = await cloud.admin.get(path)
    assert status == 200 and seen["project_id"] == project_id
    assert (await cloud.admin.get(f"{path}/events"))[0] == 200
    listed = (await cloud.admin.get(f"/v1/instances?project_id={project_id}"))[1]["items"]
    assert [item["id"] for item in listed] == [instance["id"]]
    status, deleting = await cloud.admin.call("DELETE", path)
    assert status == 202 and deleting["state"] == "deleting", deleting
