"""The operations files an operator copies: the NATS configurations must be valid for the
nats-server Nebula ships, with the password taken from the environment as documented."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nebula_core.allinone.embedded import nats_server_binary

OPS = Path(__file__).resolve().parents[2] / "ops"


@pytest.mark.parametrize("config", sorted((OPS / "nats").glob("*.conf")), ids=lambda p: p.name)
def test_the_nats_configuration_is_valid_and_requires_a_password(config: Path) -> None:
    env = {**os.environ, "NEBULA_NATS_PASSWORD": "a-password"}
    checked = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(config)], env=env, capture_output=True, text=True, timeout=30
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "is valid" in checked.stdout + checked.stderr
    assert "password: $NEBULA_NATS_PASSWORD" in config.read_text()


def test_there_is_a_single_server_and_a_cluster_configuration() -> None:
    assert {p.name for p in (OPS / "nats").glob("*.conf")} == {"single.conf", "cluster-node.conf"}
