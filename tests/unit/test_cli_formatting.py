"""What the CLI prints and parses, without an API: cells, tags, console text, events, nodes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import typer

from nebula_core.cli.events import event_line, matches
from nebula_core.cli.instances import printable
from nebula_core.cli.nodes import claimed, status
from nebula_core.cli.output import cell, when
from nebula_core.cli.session import one_line, parse_tags, tag_query
from nebula_core.contract import http as shapes


def test_cells_show_nothing_as_a_dash_and_nesting_in_brackets() -> None:
    assert [cell(None), cell(""), cell({}), cell([]), cell(True), cell(3)] == ["-", "-", "-", "-", "yes", "3"]
    assert cell({"flavor": {"vcpus": 1}, "ids": [1, 2], "note": ""}) == "flavor={vcpus=1}, ids=[1, 2], note=-"


def test_times_are_rfc3339_in_utc_as_show_at_accepts_them() -> None:
    at = datetime(2026, 11, 25, 11, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert when(at) == "2026-11-25T10:00:00Z"
    assert when(at, precise=True) == "2026-11-25T10:00:00.123456Z"
    assert when(None) == "-"


def test_tags_are_key_value_and_filters_may_be_bare_keys() -> None:
    assert parse_tags(["tier=web", "empty=", "x=a=b"]) == {"tier": "web", "empty": "", "x": "a=b"}
    assert tag_query(["tier", "env=prod"]) == [("tag", "tier"), ("tag", "env=prod")]
    for wrong in (["novalue"], ["=v"]):
        with pytest.raises(typer.BadParameter):
            parse_tags(wrong)


def test_error_messages_are_one_line() -> None:
    assert one_line("first\n  second\n") == "first second"


def test_a_guest_console_cannot_drive_the_terminal() -> None:
    assert printable("ok\x1b[2J\x1b]0;title\x07 done\r\n\tnext\x00") == "ok0;title done\n\tnext"


def record(kind: str) -> shapes.EventRecord:
    return shapes.EventRecord(
        seq=42,
        type=kind,
        aggregate=kind.split(".")[0],
        id=uuid.UUID(int=1),
        version=1,
        at=datetime(2026, 1, 1, tzinfo=UTC),
        actor="admin",
        data={},
    )


def test_event_type_filters_take_a_kind_or_an_exact_type() -> None:
    failed = record("instance.failed")
    assert matches(failed, []) and matches(failed, ["instance"]) and matches(failed, ["instance.failed"])
    assert not matches(failed, ["instance.fail"]) and not matches(failed, ["project"])
    assert event_line(failed).split() == [
        "42",
        "2026-01-01T00:00:00Z",
        "instance.failed",
        str(uuid.UUID(int=1)),
        "admin",
    ]


def node(**changes: object) -> shapes.Node:
    values: dict[str, object] = {
        "id": "node-a",
        "region": "eu",
        "capacity": {"vcpus": 8, "ram_mb": 4096, "disk_gb": 100},
        "overcommit": {"cpu": 4.0, "ram": 1.0, "disk": 1.5},
        "allocated": {"vcpus": 3, "ram_mb": 512, "disk_gb": 0},
        "instances": 2,
        "alive": True,
        "down": False,
        "agent_version": "1",
        "last_heartbeat": None,
    }
    return shapes.Node(**{**values, **changes})  # type: ignore[arg-type]


def test_nodes_show_allocation_of_capacity_with_overcommit_and_their_liveness() -> None:
    assert claimed(node(), "vcpus", "cpu") == "3/8 (x4)"
    assert claimed(node(), "ram_mb", "ram") == "512/4096"
    assert claimed(node(), "disk_gb", "disk") == "0/100 (x1.5)"
    assert [status(node()), status(node(alive=False)), status(node(down=True))] == ["up", "silent", "down"]
