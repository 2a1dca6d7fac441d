"""End-to-end through the command line, as a new user would after `nebula up`: a project,
an instance of nebula-tiny created with `--wait --booted`, its console showing what its
user-data printed, and its deletion - all by the `nebula` console script against the
whole stack with a real VM."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from tests.e2e.conftest import Nebula
from tests.e2e.test_vm import ran
from tests.integration.test_cli import Nebula as Cli

pytestmark = pytest.mark.e2e


async def test_the_cli_boots_a_vm_whose_console_shows_its_user_data(nebula: Nebula, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEBULA_")}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        NEBULA_STATE_DIR=str(tmp_path / "state"),
        NEBULA_CONFIG=str(tmp_path / "absent.toml"),
        NEBULA_URL=nebula.cloud.base,
    )
    cli = Cli(env)
    nonce = f"nonce-{secrets.token_hex(8)}"
    user_data = tmp_path / "hello.sh"
    user_data.write_text(f"#!/bin/sh\necho {nonce}\n")

    made = await cli("project", "create", "first")
    assert made.code == 0, made.err
    booted = await cli(
        "instance",
        "create",
        "--project",
        "first",
        "--name",
        "vm1",
        "--vcpus",
        "1",
        "--ram",
        "256",
        "--disk",
        "1",
        "--image",
        "nebula-tiny",
        "--user-data",
        str(user_data),
        "--wait",
        "--booted",
        "--timeout",
        "120",
        "--json",
        timeout=150,
    )
    assert booted.code == 0, booted.err
    instance = booted.json()
    nebula.leftovers.add(instance["id"])
    assert instance["state"] == "running" and instance["booted_at"]
    assert "-> running (" in booted.err and "running -> booted (" in booted.err

    console = await cli("instance", "console", "vm1", "--project", "first")
    assert console.code == 0, console.err
    assert ran(nonce, console.out.replace("\r", "")), console.out

    gone = await cli("instance", "delete", "vm1", "--project", "first", "--wait", "--timeout", "60")
    assert gone.code == 0, gone.err
    assert "-> deleted (" in gone.err
