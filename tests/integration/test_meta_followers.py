"""The metadata service's followers of the event stream and the seed bucket: what they
cannot decode is skipped and counted, and one that fails is restarted while `/healthz`
says so (503, naming it), never a silently dead follower. Real NATS, Postgres, API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from nebula_core.allinone import init
from nebula_core.contract import subjects, topology
from nebula_meta.app import make_app
from tests.integration.conftest import Cloud
from tests.integration.test_meta import USER_DATA, fetch, new_instance, served
from tests.support import eventually


@pytest.fixture
async def meta(cloud: Cloud) -> AsyncIterator[str]:
    server = TestServer(make_app(cloud.settings_for("meta"), rate=50, burst=20), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def health(cloud: Cloud, meta: str) -> tuple[int, dict[str, Any]]:
    async with cloud.session.get(f"{meta}/healthz") as response:
        return response.status, await response.json()


async def test_an_event_or_a_seed_that_cannot_be_decoded_is_skipped_and_counted(cloud: Cloud, meta: str) -> None:
    await cloud.js.publish(f"nebula.evt.instance.{uuid.uuid4()}", b'{"type": "instance.created", "id": 7')
    seeds = await cloud.js.key_value(subjects.USERDATA_BUCKET)
    await seeds.put(str(uuid.uuid4()), b"not a seed")

    # Good ones after them are served.
    instance_id, token = await new_instance(cloud)
    seed = f"{meta}/nocloud/{instance_id}/{token}/"
    await eventually(lambda: served(cloud.session, seed + "user-data"))
    assert await fetch(cloud.session, seed + "user-data") == (200, USER_DATA.encode())

    status, body = await health(cloud, meta)
    assert status == 200 and body["status"] == "ok"
    assert body["skipped"] == {"events": 1, "seeds": 1}
    assert body["followers"] == {"events": "ok", "seeds": "ok"}


async def test_a_follower_that_fails_is_restarted_and_healthz_fails_until_it_is_back(cloud: Cloud, meta: str) -> None:
    instance_id, token = await new_instance(cloud)
    await eventually(lambda: served(cloud.session, f"{meta}/nocloud/{instance_id}/{token}/user-data"))
    assert (await health(cloud, meta))[0] == 200

    await cloud.js.delete_key_value(subjects.USERDATA_BUCKET)  # what the seed follower follows is gone

    async def failing() -> dict[str, Any] | None:
        status, body = await health(cloud, meta)
        return body if status == 503 and body["followers"]["seeds"] != "ok" else None

    down = await eventually(failing, timeout=15)
    assert down["status"] == "failing" and "KV_nebula_userdata" in down["followers"]["seeds"]
    assert down["followers"]["events"] == "ok"

    await init.apply(cloud.js, topology.declare())  # the bucket is made anew (empty)

    async def healthy() -> bool:
        return (await health(cloud, meta))[0] == 200

    await eventually(healthy, timeout=15)
    # The restarted follower follows the new bucket: a new instance's user-data is served.
    later_id, later_token = await new_instance(cloud)
    later = f"{meta}/nocloud/{later_id}/{later_token}/user-data"
    await eventually(lambda: served(cloud.session, later))
    assert await fetch(cloud.session, later) == (200, USER_DATA.encode())
