"""What the CLI prints: tables for people (rich), JSON for scripts, one line per error.

Results go to stdout; progress, notes and errors to stderr, so `--json` output can be piped
as it is. Text from the API is printed as text, never interpreted as rich markup.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

#: Where stdout is not a terminal, tables are as wide as their content (one line per row, greppable).
_PIPE_WIDTH = 1000


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, highlight=False, width=_PIPE_WIDTH)
    return console


def when(value: datetime | None, precise: bool = False) -> str:
    """A time as RFC 3339 in UTC — the form `--at` accepts; `precise` keeps the microseconds."""
    if value is None:
        return "-"
    value = value.astimezone(UTC)
    if not precise:
        value = value.replace(microsecond=0)
    return value.isoformat().replace("+00:00", "Z")


def cell(value: Any, nested: bool = False) -> str:
    """A value as table text: `-` for nothing, `k=v, …` for a mapping (`{…}`/`[…]` when nested)."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return when(value)
    if isinstance(value, dict):
        text = ", ".join(f"{k}={cell(v, nested=True)}" for k, v in value.items())
        return f"{{{text}}}" if nested else text or "-"
    if isinstance(value, (list, tuple)):
        text = ", ".join(cell(v, nested=True) for v in value)
        return f"[{text}]" if nested else text or "-"
    return str(value)


class Output:
    """The printer of one command: `as_json` picks JSON over tables."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = _console(stderr=False)
        self.err = _console(stderr=True)

    def json(self, value: Any) -> None:
        """`value` (msgspec structs, lists of them, dicts) as indented JSON on stdout."""
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")
        sys.stdout.flush()

    def json_line(self, value: Any) -> None:
        """One compact JSON document per line (for streams)."""
        sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
        sys.stdout.flush()

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]], empty: str) -> None:
        """A table with a header row; `empty` goes to stderr when there are no rows."""
        rows = list(rows)
        if not rows:
            self.note(empty)
            return
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(Text(cell(v)) for v in row))
        self.out.print(table)

    def record(self, pairs: Iterable[tuple[str, Any]]) -> None:
        """One thing as `field  value` lines (what `show` prints)."""
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for name, value in pairs:
            table.add_row(Text(name), Text(cell(value)))
        self.out.print(table)

    def line(self, text: str) -> None:
        """A plain line on stdout."""
        self.out.print(Text(text), soft_wrap=True)

    def note(self, text: str) -> None:
        """A line for the person at the terminal, on stderr (never mixed into `--json` output)."""
        self.err.print(Text(text), soft_wrap=True)
