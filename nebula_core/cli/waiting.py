"""`--wait`: follow an instance until it reaches a state, showing each change as it happens.

The API accepts work with a 202 and the orchestrator does it later, so waiting is polling
`GET /v1/instances/{id}` with a deadline. What each look at the instance means is decided
by `step`, a pure function: the wait ends well when the instance reaches the state the
operation leads to, and badly when it lands in `error` (its reason is the message), is
deleted while something else was awaited, or the deadline passes first. `follow` is only
the polling around it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from nebula_core.cli.session import EXIT_FAILED, EXIT_OK, Cli, Failed
from nebula_core.contract import http as shapes

#: The state each operation leads to.
TARGET = {"create": "running", "start": "running", "reboot": "running", "stop": "stopped", "delete": "deleted"}
#: Not a state: running, and the guest has phoned home (`booted_at` is set).
BOOTED = "booted"
DEFAULT_TIMEOUT_S = 300.0
#: First poll interval; it grows while nothing changes, up to `SLOWEST_S`, and resets on a change.
FASTEST_S = 0.25
SLOWEST_S = 2.0


@dataclass(frozen=True)
class Seen:
    """One look at the instance: its state, its error (reason), and how far into the wait."""

    state: str
    error: str = ""
    elapsed: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """How a wait ended: `exit_code` 0 when the target was reached, else 1; `message` says why."""

    exit_code: int
    message: str


@dataclass(frozen=True)
class Step:
    """What one look means: a progress line to show (on a change), and the outcome once over."""

    line: str | None
    outcome: Outcome | None


def step(before: Seen | None, now: Seen, target: str, timeout: float, what: str) -> Step:
    """Judge the look `now` after `before` (None: the first look) while waiting for `target`."""
    line = None
    if before is None or before.state != now.state:
        change = now.state if before is None else f"{before.state} -> {now.state}"
        reason = f": {now.error}" if now.error and now.state == "unknown" else ""
        line = f"{what}: {change}{reason} ({now.elapsed:.1f}s)"
    if now.state == target:
        return Step(line, Outcome(EXIT_OK, f"{what} is {target}"))
    if now.state == "error":
        return Step(line, Outcome(EXIT_FAILED, f"{what} ended in error: {now.error or 'no reason given'}"))
    if now.state == "deleted":
        return Step(line, Outcome(EXIT_FAILED, f"{what} was deleted while waiting for it to be {target}"))
    if now.elapsed >= timeout:
        return Step(
            line,
            Outcome(EXIT_FAILED, f"timed out after {timeout:g}s waiting for {what} to be {target}; it is {now.state}"),
        )
    return Step(line, None)


def judge(looks: Iterable[Seen], target: str, timeout: float, what: str) -> tuple[list[str], Outcome | None]:
    """`step` over a sequence of looks: the lines shown and the outcome (None: still waiting)."""
    lines: list[str] = []
    before = None
    for now in looks:
        judged = step(before, now, target, timeout, what)
        if judged.line:
            lines.append(judged.line)
        if judged.outcome:
            return lines, judged.outcome
        before = now
    return lines, None


def next_delay(delay: float, changed: bool) -> float:
    """Poll quickly right after a change, then back off while nothing happens."""
    return FASTEST_S if changed else min(delay * 1.5, SLOWEST_S)


class Ended(Failed):
    """The wait ended without the target state; `instance` is the last thing seen."""

    def __init__(self, message: str, instance: shapes.Instance) -> None:
        super().__init__(message)
        self.instance = instance


def label(instance: shapes.Instance) -> str:
    return f"instance {instance.name} ({instance.id})"


def shown_state(instance: shapes.Instance, target: str) -> str:
    """The instance's state, except that a running instance whose guest has phoned home is
    `booted` while that is awaited (`BOOTED`)."""
    if target == BOOTED and instance.state == "running" and instance.booted_at is not None:
        return BOOTED
    return instance.state


async def follow(cli: Cli, instance: shapes.Instance, target: str, timeout: float) -> shapes.Instance:
    """Poll until `instance` is in `target` (a state, or `BOOTED`); each change is a line on
    stderr. `Ended` otherwise."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    before: Seen | None = None
    delay = FASTEST_S
    spinner: Any = cli.out.err.status("") if cli.out.err.is_terminal else nullcontext()
    with spinner as status:
        while True:
            now = Seen(shown_state(instance, target), instance.error, loop.time() - started)
            judged = step(before, now, target, timeout, label(instance))
            if judged.line:
                cli.out.note(judged.line)
            if judged.outcome is not None:
                if judged.outcome.exit_code != EXIT_OK:
                    raise Ended(judged.outcome.message, instance)
                return instance
            delay = next_delay(delay, changed=before is None or before.state != now.state)
            before = now
            if status is not None:
                status.update(f"waiting for {instance.name} to be {target}: {now.state} ({now.elapsed:.0f}s)")
            await asyncio.sleep(max(0.0, min(delay, timeout - now.elapsed)))
            instance = await cli.api.get(f"/v1/instances/{instance.id}", shapes.Instance)
