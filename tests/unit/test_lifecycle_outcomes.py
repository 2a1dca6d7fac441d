"""What a node's report of a domain means for the instance (`lifecycle.report_outcome`):
for every domain state a node may report and every state the instance may be in, the one
event recorded, or nothing."""

from __future__ import annotations

import uuid
from typing import get_args

import pytest

from nebula_core.contract.events import event_type
from nebula_core.contract.node import DomainState
from nebula_core.contract.types import InstanceState, Resources
from nebula_core.domain import AGGREGATES, Instance
from nebula_core.domain.codec import Codec
from nebula_core.orchestrator.lifecycle import report_outcome

CODEC = Codec(*AGGREGATES)
NODE = "node-a"

#: The commands that bring a new instance into each state, on node-a where it is placed.
PATHS: dict[str, list[str]] = {
    "pending": [],
    "scheduled": ["schedule"],
    "running": ["schedule", "launch"],
    "stopping": ["schedule", "launch", "request_stop"],
    "stopped": ["schedule", "launch", "request_stop", "mark_stopped"],
    "starting": ["schedule", "launch", "request_stop", "mark_stopped", "request_start"],
    "rebooting": ["schedule", "launch", "request_reboot"],
    "deleting": ["schedule", "launch", "request_delete"],
    "deleted": ["schedule", "launch", "request_delete", "mark_deleted"],
    "error": ["schedule", "launch", "fail"],
    "unknown": ["schedule", "launch", "lose"],
}
ARGUMENTS = {"schedule": (NODE,), "fail": ("it broke",), "lose": ("node-a went silent",)}

#: The specification: (reported domain state, instance state) → the event recorded.
#: Every pair not listed records nothing.
OUTCOMES: dict[tuple[str, str], tuple[str, str]] = {
    # A running domain: the work under way is done, or the instance is found running.
    ("running", "scheduled"): ("instance.launched", "running"),
    ("running", "starting"): ("instance.started", "running"),
    ("running", "stopped"): ("instance.started", "running"),
    ("running", "unknown"): ("instance.started", "running"),
    ("running", "rebooting"): ("instance.rebooted", "running"),
    # A domain that is off: the guest shut itself down, or was found off.
    ("shutoff", "running"): ("instance.stopped", "stopped"),
    ("shutoff", "stopping"): ("instance.stopped", "stopped"),
    ("shutoff", "unknown"): ("instance.stopped", "stopped"),
    # A crashed domain fails every instance that has one, or may have one.
    **{("crashed", s): ("instance.failed", "error") for s in ("scheduled", "running", "stopping", "stopped")},
    **{("crashed", s): ("instance.failed", "error") for s in ("starting", "rebooting", "unknown")},
    # A vanished domain fails the instance, unless its domain is still being created.
    **{("missing", s): ("instance.failed", "error") for s in ("running", "stopping", "stopped", "starting")},
    **{("missing", s): ("instance.failed", "error") for s in ("rebooting", "unknown")},
}
CASES = [(seen, state) for seen in get_args(DomainState) for state in get_args(InstanceState)]


def instance_in(state: str) -> Instance:
    instance = Instance(
        project_id=uuid.uuid4(),
        owner_id=uuid.uuid4(),
        name="web-1",
        description="",
        tags={},
        region="eu",
        flavor=Resources(vcpus=1, ram_mb=256, disk_gb=1),
        image_id=uuid.uuid4(),
        user_data_size=0,
        user_data_sha256="0" * 64,
        metadata_token_hash="1" * 64,
    )
    for command in PATHS[state]:
        getattr(instance, command)(*ARGUMENTS.get(command, ()))
    instance.collect_events()
    assert instance.state == state
    return instance


def test_the_paths_reach_every_instance_state() -> None:
    assert set(PATHS) == set(get_args(InstanceState))


@pytest.mark.parametrize(("seen", "state"), CASES, ids=[f"{seen}-while-{state}" for seen, state in CASES])
def test_a_reported_domain_state_records_the_outcome_of_the_table(seen: DomainState, state: str) -> None:
    instance = instance_in(state)

    outcome = report_outcome(instance, seen, NODE, "found by the node")

    if (seen, state) not in OUTCOMES:
        assert outcome is None
        return
    assert outcome is not None
    outcome(instance)
    recorded = [event_type(CODEC.to_wire(e)) for e in instance.collect_events()]
    assert (recorded, instance.state) == ([OUTCOMES[seen, state][0]], OUTCOMES[seen, state][1])


def test_a_report_that_confirms_the_instance_records_nothing() -> None:
    confirmations: list[tuple[DomainState, str]] = [
        ("running", "running"),
        ("shutoff", "stopped"),
        ("crashed", "error"),
    ]
    for seen, state in confirmations:
        assert report_outcome(instance_in(state), seen, NODE, "") is None


def test_a_crash_is_recorded_with_the_node_and_the_reason() -> None:
    instance = instance_in("running")

    outcome = report_outcome(instance, "crashed", NODE, "qemu exited")
    assert outcome is not None
    outcome(instance)

    assert instance.error == "the domain crashed on node node-a: qemu exited"


def test_a_vanished_domain_is_recorded_naming_the_node() -> None:
    instance = instance_in("stopped")

    outcome = report_outcome(instance, "missing", NODE, "")
    assert outcome is not None
    outcome(instance)

    assert instance.error == "the domain vanished from node node-a"


def test_a_domain_that_is_still_being_created_may_be_missing() -> None:
    assert report_outcome(instance_in("scheduled"), "missing", NODE, "") is None
