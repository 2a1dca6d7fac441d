"""The node client: a node's typed error comes back as the same class with the node's
message, and a node that does not answer is `NodeUnavailable` - on a stand-in for NATS
that answers with prepared replies, so every code is covered in milliseconds."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import msgspec
import nats.errors
import pytest

from nebula_core.contract import subjects
from nebula_core.contract.errors import ERRORS_BY_CODE, Invalid, NebulaError, NodeUnavailable, NotFound
from nebula_core.contract.node import DomainStatus, ErrorBody, InstanceRequest, NodeReply
from nebula_core.messaging import NodeClient, error_reply

REQUEST = InstanceRequest(instance_id=uuid.UUID(int=1))


@dataclass
class Answer:
    data: bytes


@dataclass
class FakeNats:
    """Answers each request with the next of `answers`: bytes, or an exception to raise."""

    answers: list[bytes | Exception]
    asked: list[tuple[str, float]] = field(default_factory=list)

    async def request(self, subject: str, payload: bytes, timeout: float) -> Answer:
        self.asked.append((subject, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return Answer(answer)


def client(*answers: bytes | Exception, tries: int = 1) -> tuple[NodeClient, FakeNats]:
    nc = FakeNats(list(answers))
    return NodeClient(nc, timeout=0.5, tries=tries), nc  # type: ignore[arg-type]


def as_the_node_replies(err: NebulaError) -> bytes:
    """What a node's handler that raised `err` puts on the wire (see `reply_errors`)."""
    return msgspec.json.encode(error_reply(err.code, err.message))


@pytest.mark.parametrize(("code", "cls"), sorted(ERRORS_BY_CODE.items()))
async def test_every_error_code_comes_back_as_its_own_class_with_the_nodes_message(
    code: str, cls: type[NebulaError]
) -> None:
    message = f"the node says {code}: <&> \u2713"
    nodes, _ = client(as_the_node_replies(cls(message)))

    with pytest.raises(NebulaError) as raised:
        await nodes.call("n1", "status", REQUEST)

    assert type(raised.value) is cls
    assert (raised.value.code, raised.value.message, str(raised.value)) == (code, message, message)


async def test_an_invalid_from_the_node_is_an_invalid_without_fields() -> None:
    nodes, _ = client(as_the_node_replies(Invalid("bad image", ["$.image"])))

    with pytest.raises(Invalid) as raised:
        await nodes.call("n1", "create", REQUEST)

    assert raised.value.fields == []  # ErrorBody carries no fields


async def test_a_code_this_version_does_not_know_is_a_nebula_error_that_names_it() -> None:
    wire = msgspec.json.encode(NodeReply(error=ErrorBody(code="quantum_flux", message="try later")))
    nodes, _ = client(wire)

    with pytest.raises(NebulaError) as raised:
        await nodes.call("n1", "status", REQUEST)

    assert type(raised.value) is NebulaError
    assert raised.value.code == "internal" and raised.value.message == "try later (error code 'quantum_flux')"


async def test_an_answer_without_an_error_is_the_reply() -> None:
    reply = NodeReply(status=DomainStatus(instance_id=REQUEST.instance_id, state="running"))
    nodes, nc = client(msgspec.json.encode(reply))

    assert await nodes.call("n1", "status", REQUEST, timeout=2) == reply
    assert nc.asked == [(subjects.node_subject("n1", "status"), 2)]


@pytest.mark.parametrize(
    "silence", [nats.errors.TimeoutError(), TimeoutError(), nats.errors.NoRespondersError()], ids=repr
)
async def test_a_node_that_never_answers_is_unavailable_after_every_try(silence: Exception) -> None:
    nodes, nc = client(silence, silence, tries=2)

    with pytest.raises(NodeUnavailable, match=r"node n1 did not answer stop after 2 tries of 0\.5 s"):
        await nodes.call("n1", "stop", REQUEST)

    assert len(nc.asked) == 2


async def test_only_an_unanswered_request_is_repeated() -> None:
    ok = msgspec.json.encode(NodeReply(status=DomainStatus(instance_id=REQUEST.instance_id, state="missing")))
    retried, nc = client(nats.errors.TimeoutError(), ok, tries=3)
    refused, refused_nc = client(as_the_node_replies(NotFound("no domain")), ok, tries=3)

    assert (await retried.call("n1", "delete", REQUEST)).status is not None
    with pytest.raises(NotFound):
        await refused.call("n1", "start", REQUEST)

    assert (len(nc.asked), len(refused_nc.asked)) == (2, 1)


async def test_an_answer_that_is_not_a_reply_is_an_internal_error() -> None:
    nodes, _ = client(b"{not json")

    with pytest.raises(NebulaError, match="node n1 answered status with something that is not a reply"):
        await nodes.call("n1", "status", REQUEST)
