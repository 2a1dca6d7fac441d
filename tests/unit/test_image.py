"""The Image aggregate on its own: each command, the events it records (by their wire
names), the state after, and what it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from nebula_core.contract.errors import IllegalTransition
from nebula_core.contract.events import event_type
from nebula_core.domain import AGGREGATES, Image
from nebula_core.domain.codec import Codec

CODEC = Codec(*AGGREGATES)
SHA = "ab" * 32


def wire_of(image: Image) -> list[Any]:
    """The events recorded since the last call, as they would go on the stream."""
    return [CODEC.to_wire(e) for e in image.collect_events()]


def new_image() -> Image:
    return Image(name="debian-13", format="qcow2", source="https://example.org/d.qcow2", sha256=SHA, size=1 << 30)


def test_a_new_image_records_registered_with_what_it_was_given() -> None:
    image = new_image()

    [registered] = wire_of(image)

    assert event_type(registered) == "image.registered"
    assert (registered.name, registered.format, registered.source) == (
        "debian-13",
        "qcow2",
        "https://example.org/d.qcow2",
    )
    assert (registered.sha256, registered.size, registered.min_disk_gb) == (SHA, 1 << 30, 0)
    assert not image.deleted


def test_delete_marks_the_image_deleted() -> None:
    image = new_image()
    image.collect_events()

    image.delete()

    assert [event_type(e) for e in wire_of(image)] == ["image.deleted"]
    assert image.deleted


def test_a_deleted_image_cannot_be_deleted_again() -> None:
    image = new_image()
    image.delete()
    image.collect_events()

    with pytest.raises(IllegalTransition, match="already deleted"):
        image.delete()
    assert wire_of(image) == []
