"""Each role's NATS identity may do its work and nothing else, on a real nats-server with
the authorization `nebula up` generates: a guest or a compromised host holding one
role's credentials cannot append events, read the seeds, impersonate a node or command
the cloud."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from nebula_core import nats_client
from nebula_core.allinone.embedded import NatsServer
from nebula_core.allinone.nats_auth import control_users
from nebula_core.contract import permissions, subjects
from nebula_core.contract.node import node_uuid
from nebula_core.contract.permissions import node_user
from tests.support import eventually

NODE, OTHER = "n1", "n2"


@pytest.fixture
def nats_server(tmp_path) -> NatsServer:  # type: ignore[override]
    server = NatsServer(tmp_path / "nats", users=control_users([NODE, OTHER])).start()
    yield server
    server.stop()


class Refusals:
    """What the server told a client it refused (nats-py reports it to the error callback)."""

    def __init__(self) -> None:
        self.said: list[str] = []

    async def record(self, err: Exception) -> None:
        self.said.append(str(err))

    async def refused(self, what: str, subject: str) -> bool:
        return any(
            "permissions violation" in s.lower() and what in s.lower() and subject.lower() in s.lower()
            for s in self.said
        )


@asynccontextmanager
async def connected(server: NatsServer, user: str) -> AsyncIterator[tuple[NATS, Refusals]]:
    refusals = Refusals()
    url = server.url_for(user)
    nc = await nats.connect(url, error_cb=refusals.record, allow_reconnect=False, **nats_client.identity_options(url))
    try:
        yield nc, refusals
    finally:
        await nc.close()


async def stream_last_seq(js: JetStreamContext, stream: str) -> int:
    return int((await js.stream_info(stream)).state.last_seq)


async def refused_publish(server: NatsServer, js: JetStreamContext, user: str, subject: str, stream: str) -> None:
    """`user` publishing on `subject` of `stream` is refused, and the stream does not grow."""
    before = await stream_last_seq(js, stream)
    async with connected(server, user) as (nc, refusals):
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await nc.jetstream().publish(subject, b"{}", timeout=1.0)
        await eventually(lambda: refusals.refused("publish", subject), timeout=5)
    assert await stream_last_seq(js, stream) == before


async def refused_subscribe(server: NatsServer, user: str, subject: str) -> None:
    async with connected(server, user) as (nc, refusals):
        await nc.subscribe(subject)
        await eventually(lambda: refusals.refused("subscription", subject), timeout=5)


async def seeds_unreadable(server: NatsServer, js: JetStreamContext, user: str) -> None:
    """`user` cannot read an instance's seed (its user-data and metadata token)."""
    key = str(uuid.uuid4())
    await (await js.key_value(subjects.USERDATA_BUCKET)).put(key, b"secret")
    async with connected(server, user) as (nc, refusals):
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.Error)):
            bucket = await nc.jetstream(timeout=1.0).key_value(subjects.USERDATA_BUCKET)
            await bucket.get(key)
        await eventually(lambda: refusals.refused("publish", f"KV_{subjects.USERDATA_BUCKET}"), timeout=5)


async def test_no_anonymous_client_is_served(nats_server: NatsServer) -> None:
    with pytest.raises((nats.errors.NoServersError, nats.errors.Error, OSError)):
        await nats.connect(nats_server.address, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)


async def test_a_wrong_password_is_refused(nats_server: NatsServer) -> None:
    wrong = nats_server.address.replace("nats://", "nats://api:not-the-password@")
    with pytest.raises((nats.errors.NoServersError, nats.errors.Error, OSError)):
        await nats.connect(wrong, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)


async def test_a_node_does_its_own_work(nats_server: NatsServer, js: JetStreamContext) -> None:
    async with connected(nats_server, node_user(NODE)) as (nc, refusals):
        node_js = nc.jetstream()
        await node_js.publish(f"$KV.{subjects.NODES_BUCKET}.{NODE}", b"{}", timeout=5)
        await node_js.publish(subjects.report_subject(NODE), b"{}", timeout=5)
        requests = await nc.subscribe(subjects.node_subject(NODE, "status"))
        await nc.flush()
        async with connected(nats_server, "orchestrator") as (orch, orch_refusals):
            pending = asyncio.create_task(orch.request(subjects.node_subject(NODE, "status"), b"?", timeout=5))
            request = await requests.next_msg(timeout=5)
            await request.respond(b"fine")
            assert (await pending).data == b"fine"
            # ... and asks the orchestrators about itself, who answer it.
            asked = await orch.subscribe(subjects.control_requests("claims"), queue=subjects.CONTROL_QUEUE)
            await orch.flush()
            pending = asyncio.create_task(nc.request(subjects.control_subject(NODE, "claims"), b"{}", timeout=5))
            question = await asked.next_msg(timeout=5)
            assert question.subject == subjects.control_subject(NODE, "claims")
            await question.respond(b"yours")
            assert (await pending).data == b"yours"
        assert orch_refusals.said == []
    assert refusals.said == []


async def test_a_node_cannot_append_other_events_or_publish_commands(
    nats_server: NatsServer, js: JetStreamContext
) -> None:
    user = node_user(NODE)
    for subject in (
        subjects.event_subject("user", uuid.uuid4()),
        subjects.event_subject("instance", uuid.uuid4()),
        subjects.event_subject("node", node_uuid(NODE)),  # not even its own: it asks the orchestrators
        subjects.event_subject("node", node_uuid(OTHER)),
    ):
        await refused_publish(nats_server, js, user, subject, subjects.EVENTS_STREAM)
    for subject in (
        subjects.command_subject("place"),
        subjects.command_subject("delete"),
        subjects.report_subject(OTHER),
    ):
        await refused_publish(nats_server, js, user, subject, subjects.COMMANDS_STREAM)
    await refused_publish(nats_server, js, user, f"$KV.{subjects.NODES_BUCKET}.{OTHER}", f"KV_{subjects.NODES_BUCKET}")
    async with connected(nats_server, user) as (nc, refusals):  # nor speak for another node
        other = subjects.control_subject(OTHER, "register")
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await nc.request(other, b"{}", timeout=1.0)
        await eventually(lambda: refusals.refused("publish", other), timeout=5)


async def test_a_node_cannot_read_the_event_stream(nats_server: NatsServer, js: JetStreamContext) -> None:
    async with connected(nats_server, node_user(NODE)) as (nc, refusals):
        for subject in (
            f"$JS.API.STREAM.INFO.{subjects.EVENTS_STREAM}",
            f"$JS.API.DIRECT.GET.{subjects.EVENTS_STREAM}",
            f"$JS.API.CONSUMER.CREATE.{subjects.EVENTS_STREAM}",
        ):
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                await nc.request(subject, b"{}", timeout=1.0)
            await eventually(lambda s=subject: refusals.refused("publish", s), timeout=5)


async def test_a_node_cannot_read_the_seeds_or_another_nodes_requests_or_replies(
    nats_server: NatsServer, js: JetStreamContext
) -> None:
    user = node_user(NODE)
    await seeds_unreadable(nats_server, js, user)
    await refused_subscribe(nats_server, user, f"{subjects.NODE_PREFIX}.{OTHER}.>")
    await refused_subscribe(nats_server, user, f"{subjects.NODE_PREFIX}.>")
    await refused_subscribe(nats_server, user, "_INBOX.>")
    await refused_subscribe(nats_server, user, f"{permissions.inbox_prefix('api')}.>")
    await refused_subscribe(nats_server, user, ">")


@pytest.mark.parametrize("user", ["projector", "meta"])
async def test_readers_cannot_publish_commands_or_reach_nodes(
    nats_server: NatsServer, js: JetStreamContext, user: str
) -> None:
    await refused_publish(nats_server, js, user, subjects.command_subject("place"), subjects.COMMANDS_STREAM)
    await refused_publish(nats_server, js, user, subjects.event_subject("user", uuid.uuid4()), subjects.EVENTS_STREAM)
    await refused_subscribe(nats_server, user, f"{subjects.NODE_PREFIX}.{NODE}.>")
    async with connected(nats_server, user) as (nc, refusals):
        nc_js = nc.jetstream(timeout=1.0)
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await nc.request(subjects.node_subject(NODE, "delete"), b"{}", timeout=1.0)
        await eventually(lambda: refusals.refused("publish", subjects.node_subject(NODE, "delete")), timeout=5)
        assert nc_js is not None


async def test_meta_relays_a_boot_and_records_nothing_itself(nats_server: NatsServer, js: JetStreamContext) -> None:
    async with connected(nats_server, "meta") as (nc, refusals):
        await nc.jetstream().publish(subjects.command_subject("booted"), b"{}", timeout=5)
    assert refusals.said == []
    for subject in (subjects.event_subject("instance", uuid.uuid4()), subjects.event_subject("node", uuid.uuid4())):
        await refused_publish(nats_server, js, "meta", subject, subjects.EVENTS_STREAM)
    for verb in ("start", "delete", "report"):
        await refused_publish(nats_server, js, "meta", subjects.command_subject(verb), subjects.COMMANDS_STREAM)


async def test_the_projector_cannot_read_the_seeds(nats_server: NatsServer, js: JetStreamContext) -> None:
    await seeds_unreadable(nats_server, js, "projector")


@pytest.mark.parametrize("user", ["api", "orchestrator", "projector", "meta", node_user(NODE)])
async def test_no_role_but_the_operator_may_delete_or_purge_a_stream(
    nats_server: NatsServer, js: JetStreamContext, user: str
) -> None:
    async with connected(nats_server, user) as (nc, refusals):
        for op in ("DELETE", "PURGE"):
            subject = f"$JS.API.STREAM.{op}.{subjects.EVENTS_STREAM}"
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
                await nc.request(subject, b"", timeout=1.0)
            await eventually(lambda s=subject: refusals.refused("publish", s), timeout=5)
    assert (await js.stream_info(subjects.EVENTS_STREAM)).config.name == subjects.EVENTS_STREAM


async def test_the_api_cannot_command_a_node_or_read_another_roles_replies(
    nats_server: NatsServer, js: JetStreamContext
) -> None:
    await refused_subscribe(nats_server, "api", f"{permissions.inbox_prefix('orchestrator')}.>")
    await refused_subscribe(nats_server, "api", f"{subjects.NODE_PREFIX}.{NODE}.>")
    async with connected(nats_server, "api") as (nc, refusals):
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await nc.request(subjects.node_subject(NODE, "create"), b"{}", timeout=1.0)
        await eventually(lambda: refusals.refused("publish", subjects.node_subject(NODE, "create")), timeout=5)


def test_every_role_has_an_inbox_of_its_own() -> None:
    users = control_users([NODE])
    inboxes = {u: permissions.inbox_prefix(u) for u in users}
    assert len(set(inboxes.values())) == len(users)
    for user in users:
        if user == permissions.ADMIN_USER:
            continue
        allowed = permissions.role(user).subscribe
        others = [f"{inboxes[o]}.>" for o in users if o != user]
        assert not set(allowed) & set(others), user
        assert not any(s in ("_INBOX.>", ">") for s in allowed), user


def test_server_users_are_json_the_server_reads() -> None:
    config = permissions.server_users({"api": "pw", node_user(NODE): "pw2"})
    assert msgspec.json.decode(msgspec.json.encode(config)) == config
    assert [u["user"] for u in config] == ["api", node_user(NODE)]
