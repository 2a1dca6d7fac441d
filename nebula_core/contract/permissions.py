"""Who may do what on NATS: one identity per role, with the subjects it may publish to and
subscribe to, and nothing else. `nebula up` and `nebula nats-auth` turn this table into
the nats-server `authorization` block; the tests hold each role to it.

Every role gets an inbox of its own (`_INBOX_<user>`, set by `nebula_core.nats_client`
from the user in its URL), so no role can read the replies meant for another: a node
that could subscribe to `_INBOX.>` would see every answer of the control plane.

JetStream is reached through its API subjects (`$JS.API.…`): a role is allowed the calls
it makes on the streams it uses (stream info, direct gets, consumer create/next/ack), and
stream publishes (`nebula.evt.…`, `$KV.<bucket>.<key>`) only on the subjects it writes.
"""

from __future__ import annotations

import msgspec

from nebula_core.contract import subjects

API = "$JS.API"
ADMIN_USER = "admin"
#: The control-plane roles, each one NATS user; nodes are users `node-<node id>`.
CONTROL_ROLES = ("api", "orchestrator", "projector", "meta")
NODE_USER_PREFIX = "node-"
#: The fleet simulator: it answers for every simulated node (a developer tool, not a role
#: any production host runs).
SIM_USER = "sim"
#: The user nats-servers of a cluster authenticate each other's routes with (no client).
ROUTE_USER = "nebula-route"


class Permissions(msgspec.Struct, frozen=True, kw_only=True):
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    #: May answer requests sent to it (publish once to each request's reply subject).
    allow_responses: bool = False


def inbox_prefix(user: str) -> str:
    """The inbox of NATS user `user`: only it may subscribe there."""
    return f"_INBOX_{user}"


def node_user(node_id: str) -> str:
    subjects.node_subject(node_id, "status")  # refuses what is no subject token
    return f"{NODE_USER_PREFIX}{node_id}"


def _reader(stream: str) -> tuple[str, ...]:
    """Read a stream: its info, direct and API gets, and ephemeral (ordered) consumers."""
    return (
        f"{API}.STREAM.INFO.{stream}",
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.STREAM.MSG.GET.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.>",
        f"{API}.CONSUMER.INFO.{stream}.*",
        f"{API}.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
    )


def _durable(stream: str, consumer: str) -> tuple[str, ...]:
    """Pull from, acknowledge on, and read the state of one durable consumer."""
    return (
        f"{API}.CONSUMER.INFO.{stream}.{consumer}",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        f"{API}.CONSUMER.CREATE.{stream}.{consumer}",
        f"{API}.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"$JS.ACK.{stream}.{consumer}.>",
    )


def _kv(bucket: str) -> str:
    return f"KV_{bucket}"


def _kv_write(bucket: str, key: str = ">") -> str:
    return f"$KV.{bucket}.{key}"


def _commands(*verbs: str) -> tuple[str, ...]:
    return tuple(subjects.command_subject(verb) for verb in verbs)


_EVENTS = subjects.EVENTS_STREAM
_NODES = _kv(subjects.NODES_BUCKET)
_SEEDS = _kv(subjects.USERDATA_BUCKET)


def role(user: str) -> Permissions:
    """The permissions of NATS user `user` (a control-plane role, `admin`, `sim`, or a node)."""
    if user == ADMIN_USER:
        # `nebula init`, `nebula replay` and the operator's own tools: everything.
        return Permissions(publish=(">",), subscribe=(">",), allow_responses=True)
    inbox = (f"{inbox_prefix(user)}.>",)
    if user == "api":
        return Permissions(
            publish=(
                subjects.EVENTS_ALL,  # appends every aggregate's events
                *_commands("place", "start", "stop", "reboot", "delete"),
                *_reader(_EVENTS),
                *_reader(_NODES),
                *_reader(_SEEDS),
                _kv_write(subjects.USERDATA_BUCKET),
                f"{subjects.NODE_PREFIX}.*.console",
            ),
            subscribe=inbox,
        )
    if user == "orchestrator":
        return Permissions(
            publish=(
                subjects.EVENTS_ALL,
                subjects.COMMANDS_ALL,  # re-drives every verb, evacuates
                *_reader(_EVENTS),
                f"{API}.STREAM.INFO.{subjects.COMMANDS_STREAM}",
                *_durable(subjects.COMMANDS_STREAM, subjects.ORCHESTRATOR_CONSUMER),
                *_reader(_NODES),
                *_reader(_SEEDS),  # the seed a node is given with its create request
                f"{subjects.NODE_PREFIX}.*.*",
            ),
            # The nodes' registrations and questions about their claims, answered.
            subscribe=(*inbox, f"{subjects.CONTROL_PREFIX}.*.*"),
            allow_responses=True,
        )
    if user == "projector":
        return Permissions(
            publish=(*_reader(_EVENTS), *_durable(_EVENTS, subjects.PROJECTOR_CONSUMER)),
            subscribe=inbox,
        )
    if user == "meta":
        return Permissions(
            # It relays a guest's phone-home to the orchestrators; it writes nothing else.
            publish=(*_commands("booted"), *_reader(_EVENTS), *_reader(_SEEDS)),
            subscribe=inbox,
        )
    if user == SIM_USER:
        return _node_permissions(user, "*")
    if user.startswith(NODE_USER_PREFIX):
        node_id = user.removeprefix(NODE_USER_PREFIX)
        return _node_permissions(user, node_id)
    raise ValueError(f"no NATS role {user!r}")


def _node_permissions(user: str, node_id: str) -> Permissions:
    """A node answers its own requests, writes its own heartbeat key, publishes its own
    reports and asks the orchestrators on its own control subjects (its registration, its
    claims). It appends no event and reads none, reads no seed and sends no other command."""
    return Permissions(
        publish=(
            subjects.report_subject(node_id) if node_id != "*" else f"{subjects.COMMANDS_PREFIX}.report.*",
            _kv_write(subjects.NODES_BUCKET, node_id),
            f"{subjects.CONTROL_PREFIX}.{node_id}.*",
        ),
        subscribe=(f"{subjects.NODE_PREFIX}.{node_id}.>", f"{inbox_prefix(user)}.>"),
        allow_responses=True,
    )


def server_users(passwords: dict[str, str]) -> list[dict[str, object]]:
    """The `authorization.users` of nats-server's configuration for these users."""
    users: list[dict[str, object]] = []
    for user, password in sorted(passwords.items()):
        allowed = role(user)
        permissions: dict[str, object] = {
            "publish": {"allow": list(allowed.publish)},
            "subscribe": {"allow": list(allowed.subscribe)},
        }
        if allowed.allow_responses:
            permissions["allow_responses"] = True
        users.append({"user": user, "password": password, "permissions": permissions})
    return users
