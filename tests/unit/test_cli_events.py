"""`nebula events tail` against a scripted stream: it resumes after drops, never repeats or
skips an event, and gives up with a resumable message when the API stays away."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from nebula_core.cli import events
from nebula_core.cli.client import Unreachable
from nebula_core.cli.output import Output
from nebula_core.cli.session import Cli
from nebula_core.contract import http as shapes


def record(seq: int) -> shapes.EventRecord:
    return shapes.EventRecord(
        seq=seq,
        type="instance.created",
        aggregate="instance",
        id=uuid.UUID(int=seq),
        version=1,
        at=datetime(2026, 1, 1, tzinfo=UTC),
        actor="admin",
        data={},
    )


class ScriptedApi:
    """Each connection serves the next script entry: sequences to send, then how it ends."""

    def __init__(self, *connections: tuple[list[int], str]) -> None:
        self.connections = list(connections)
        self.asked_since: list[int | None] = []

    async def events(self, since: int | None) -> AsyncIterator[shapes.EventRecord]:
        self.asked_since.append(since)
        if not self.connections:
            raise Unreachable("cannot reach the API at http://api: connection refused")
        seqs, ending = self.connections.pop(0)
        for seq in seqs:
            if since is None or seq > since:
                yield record(seq)
        if ending == "drop":
            raise Unreachable("the API at http://api closed the connection")


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "_PAUSE_S", 0.0)


async def tail(api: ScriptedApi, as_json: bool = True, **options: object) -> None:
    given = {"since": None, "count": None, "event_type": None, **options}
    await events.tail(Cli(api, Output(as_json)), **given)  # type: ignore[arg-type]


async def test_a_dropped_stream_resumes_after_the_last_event_printed(capsys: pytest.CaptureFixture[str]) -> None:
    api = ScriptedApi(([1, 2], "drop"), ([3], "end"), ([4, 5], "end"))
    await tail(api, since=0, count=4)
    captured = capsys.readouterr()
    assert [json.loads(line)["seq"] for line in captured.out.splitlines()] == [1, 2, 3, 4]
    assert api.asked_since == [0, 2, 3]
    assert "closed the connection; reconnecting (--since 2)" in captured.err


async def test_an_api_that_never_answers_fails_at_once() -> None:
    api = ScriptedApi()
    with pytest.raises(Unreachable, match="connection refused"):
        await tail(api)
    assert api.asked_since == [None]


async def test_an_api_that_stays_away_ends_the_tail_saying_how_to_resume() -> None:
    api = ScriptedApi(([7], "drop"))
    with pytest.raises(Unreachable, match=r"gave up after 5 tries \(resume with --since 7\)"):
        await tail(api, as_json=False)
    assert api.asked_since == [None] + [7] * events.RECONNECTS
