"""`nebula up` never prints a secret: its banner and log lines redact the Postgres DSN's
password and the NATS credentials, and name where the admin token is instead of showing
it; and each child is handed only the settings its role needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from nebula_core import config
from nebula_core.allinone import up
from nebula_core.allinone.up import AllInOne, Child

SECRETS = ("pg-s3cret", "nats-s3cret", "key-s3cret", "admin-s3cret-token")
NATS_URL = "nats://api:nats-s3cret@127.0.0.1:4222"
PG_DSN = "postgresql://nebula:pg-s3cret@db.example:5432/nebula?sslmode=verify-full&sslpassword=key-s3cret"


def all_in_one(tmp_path: Path, admin_token: str = "") -> AllInOne:
    return AllInOne(config.load({}, state_dir=str(tmp_path), admin_token=admin_token), libvirt_uri="test:///default")


@pytest.mark.parametrize("configured", [True, False], ids=["configured token", "generated token"])
def test_the_banner_shows_no_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str], configured: bool) -> None:
    cloud = all_in_one(tmp_path, admin_token="admin-s3cret-token" if configured else "")
    token = cloud.admin_token()

    cloud._banner(NATS_URL, PG_DSN)

    out, err = capsys.readouterr()
    printed = out + err
    assert not [secret for secret in (*SECRETS, token) if secret in printed]
    assert "Postgres:    postgresql://nebula:***@db.example:5432/nebula" in printed
    assert "NATS:        nats://api:***@127.0.0.1:4222" in printed
    where = "NEBULA_ADMIN_TOKEN" if configured else str(tmp_path / "admin-token")
    assert any(line.startswith("  admin token:") and where in line for line in printed.splitlines())


async def test_only_the_api_is_handed_the_admin_token_and_only_the_control_plane_postgres(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloud = all_in_one(tmp_path)
    started: list[Child] = []

    async def start(child: Child, ready: object = None) -> None:
        started.append(child)

    monkeypatch.setattr(cloud.supervisor, "start", start)

    await cloud._start_roles(NATS_URL, PG_DSN, "admin-s3cret-token")

    handed = {child.name: child.env for child in started}
    assert set(handed) == {"projector", "meta", "api", "orchestrator", "node"}
    assert [name for name, env in handed.items() if "NEBULA_ADMIN_TOKEN" in env] == ["api"]
    assert handed["api"]["NEBULA_ADMIN_TOKEN"] == "admin-s3cret-token"
    assert {name for name, env in handed.items() if "NEBULA_PG_DSN" in env} == {"api", "orchestrator", "projector"}


async def test_a_child_inherits_no_secret_from_nebula_ups_own_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEBULA_ADMIN_TOKEN", "admin-s3cret-token")
    monkeypatch.setenv("NEBULA_PG_DSN", PG_DSN)
    monkeypatch.setenv("NEBULA_UNRELATED", "kept")
    supervisor = up.Supervisor(tmp_path / "logs")
    child = Child("meta", ["/bin/sh", "-c", "env"], {"NEBULA_NATS_URL": "nats://127.0.0.1:4222"})

    await supervisor._spawn(child)
    assert child.proc is not None
    await child.proc.wait()

    seen = dict(line.split("=", 1) for line in (tmp_path / "logs" / "meta.log").read_text().splitlines() if "=" in line)
    assert "NEBULA_ADMIN_TOKEN" not in seen and "NEBULA_PG_DSN" not in seen
    assert seen["NEBULA_NATS_URL"] == "nats://127.0.0.1:4222" and seen["NEBULA_UNRELATED"] == "kept"
