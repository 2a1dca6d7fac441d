"""`nebula events tail`: the live event stream (`GET /v1/events`), as it happens.

Each event is one line for people, one compact JSON document per line with `--json`. The
stream resumes where it left off: `--since N` starts right after sequence N, and when the
connection drops the command reconnects from the last sequence it printed, so nothing is
lost or repeated; after `RECONNECTS` failed tries in a row it gives up and says how to
resume.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from nebula_core.cli.client import Unreachable
from nebula_core.cli.output import when
from nebula_core.cli.session import Cli, command, group
from nebula_core.contract import http as shapes

app = group("events", "The cloud's event log, live: every change to what your token may see.")

#: Failed reconnections in a row before giving up; the pause doubles from `_PAUSE_S` each time.
RECONNECTS = 5
_PAUSE_S = 0.5


def matches(record: shapes.EventRecord, types: list[str]) -> bool:
    """`--type instance` keeps every instance event, `--type instance.failed` just those."""
    return not types or any(record.type == t or record.type.startswith(t + ".") for t in types)


def event_line(record: shapes.EventRecord) -> str:
    return f"{record.seq:>8}  {when(record.at, precise=True)}  {record.type:<28} {record.id}  {record.actor}"


@command(app, "tail")
async def tail(
    cli: Cli,
    since: Annotated[
        int | None,
        typer.Option(
            help="Start right after this stream sequence (0: from the very first event); default: new events only.",
            min=0,
            show_default=False,
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(help="Stop after this many events; default: follow until interrupted.", min=1, show_default=False),
    ] = None,
    event_type: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            help="Only events of this type or kind, e.g. instance or instance.failed (repeatable).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Follow the event stream live (Ctrl-C to stop); --since resumes from a sequence."""
    types = event_type or []
    last, printed, failures, streamed = since, 0, 0, False
    while True:
        try:
            async for record in cli.api.events(last):
                last, failures, streamed = record.seq, 0, True
                if not matches(record, types):
                    continue
                if cli.out.as_json:
                    cli.out.json_line(record)
                else:
                    cli.out.line(event_line(record))
                printed += 1
                if count is not None and printed >= count:
                    return
            problem = "the API closed the event stream"
        except Unreachable as err:
            if not streamed:
                raise  # nothing ever came: the API is not there, no point in insisting
            problem = str(err)
        failures += 1
        resume = f"--since {last}" if last is not None else "no --since"
        if failures > RECONNECTS:
            raise Unreachable(f"{problem}; gave up after {RECONNECTS} tries (resume with {resume})")
        cli.out.note(f"{problem}; reconnecting ({resume})")
        await asyncio.sleep(_PAUSE_S * 2 ** (failures - 1))


def register(root: typer.Typer) -> None:
    root.add_typer(app, rich_help_panel="Using the cloud")
