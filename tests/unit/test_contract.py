"""Subjects, configuration and the published schemas."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from nebula_core import config
from nebula_core.contract import subjects
from nebula_core.devtools import schemas


def test_subjects_follow_the_design() -> None:
    some_id = uuid.uuid4()
    assert subjects.event_subject("instance", some_id) == f"nebula.evt.instance.{some_id}"
    assert subjects.command_subject("place") == "nebula.cmd.place"
    assert subjects.node_subject("node-1", "create") == "nebula.node.node-1.create"


@pytest.mark.parametrize("hostile", ["a.b", "a*", ">", "a b", ""])
def test_a_token_cannot_widen_a_subject(hostile: str) -> None:
    with pytest.raises(ValueError):
        subjects.node_subject(hostile, "create")
    with pytest.raises(ValueError):
        subjects.event_subject("instance", hostile)


def test_schemas_directory_matches_the_code() -> None:
    """If this fails, run `nebula schemas --write` (or `make schemas`) and commit schemas/."""
    assert schemas.drift(Path(__file__).resolve().parents[2] / "schemas") == []


def test_every_message_type_has_a_schema_file() -> None:
    files = schemas.generate()
    assert "events/instance.created.json" in files
    assert "commands/place.json" in files
    assert "kv/Heartbeat.json" in files
    assert "asyncapi.json" in files


def test_settings_come_from_the_environment_over_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "nebula.toml"
    toml.write_text('region = "from-file"\nnats_url = "nats://file:4222"\nnats_replicas = 3\n')
    settings = config.load(
        {"NEBULA_CONFIG": str(toml), "NEBULA_REGION": "from-env", "NEBULA_HEARTBEAT_INTERVAL": "2.5"}
    )
    assert settings.region == "from-env"
    assert settings.nats_url == "nats://file:4222"
    assert settings.nats_replicas == 3
    assert settings.heartbeat_interval == 2.5


def test_a_bad_setting_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="nats_replicas"):
        config.load({"NEBULA_CONFIG": "/nonexistent", "NEBULA_NATS_REPLICAS": "three"})
