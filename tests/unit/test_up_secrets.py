"""`nebula up` never prints a secret: its banner and log lines redact the Postgres DSN's
password and the NATS credentials, and name where the admin token is instead of showing
it; and each child is handed only the settings its role needs."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from nebula_core import config
from nebula_core.allinone import up
from nebula_core.allinone.embedded import NatsServer
from nebula_core.allinone.nats_auth import control_users
from nebula_core.allinone.up import AllInOne, Child
from nebula_core.contract.permissions import node_user

SECRETS = ("pg-s3cret", "nats-s3cret", "key-s3cret", "admin-s3cret-token")
NATS_URL = "nats://api:nats-s3cret@127.0.0.1:4222"
PG_DSN = "postgresql://nebula:pg-s3cret@db.example:5432/nebula?sslmode=verify-full&sslpassword=key-s3cret"


def all_in_one(tmp_path: Path, admin_token: str = "", nats_url: str | None = NATS_URL) -> AllInOne:
    """A `nebula up` on the operator's NATS at `nats_url`; None: on one it starts (not
    started here: its users and passwords are made, as `_start_nats` makes them)."""
    settings = config.load({}, state_dir=str(tmp_path), admin_token=admin_token)
    cloud = AllInOne(settings, nats_url=nats_url, libvirt_uri="test:///default")
    if nats_url is None:
        cloud.nats = NatsServer(tmp_path / "nats", users=control_users([settings.node_id]))
    return cloud


@pytest.mark.parametrize("configured", [True, False], ids=["configured token", "generated token"])
def test_the_banner_shows_no_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str], configured: bool) -> None:
    cloud = all_in_one(tmp_path, admin_token="admin-s3cret-token" if configured else "")
    token = cloud.admin_token()

    cloud._banner(PG_DSN)

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

    await cloud._start_roles(PG_DSN, "admin-s3cret-token")

    handed = {child.name: child.env for child in started}
    assert set(handed) == {"projector", "meta", "api", "orchestrator", "node"}
    assert [name for name, env in handed.items() if "NEBULA_ADMIN_TOKEN" in env] == ["api"]
    assert handed["api"]["NEBULA_ADMIN_TOKEN"] == "admin-s3cret-token"
    assert {name for name, env in handed.items() if "NEBULA_PG_DSN" in env} == {"api", "orchestrator", "projector"}


def test_the_banner_of_an_embedded_nats_names_where_the_passwords_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud = all_in_one(tmp_path, nats_url=None)
    assert cloud.nats is not None
    passwords = [cloud.nats.credentials.password(user) for user in cloud.nats.users or []]

    cloud._banner(PG_DSN)

    printed = "".join(capsys.readouterr())
    assert passwords and not [p for p in passwords if p in printed]
    assert f"NATS:        {cloud.nats.address}" in printed and str(cloud.nats.credentials.directory) in printed


async def test_each_child_is_handed_its_own_nats_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cloud = all_in_one(tmp_path, nats_url=None)
    assert cloud.nats is not None
    started: list[Child] = []

    async def start(child: Child, ready: object = None) -> None:
        started.append(child)

    monkeypatch.setattr(cloud.supervisor, "start", start)

    await cloud._start_roles(PG_DSN, "admin-s3cret-token")

    users = {child.name: urlparse(child.env["NEBULA_NATS_URL"]) for child in started}
    expected = {r: r for r in ("projector", "meta", "api", "orchestrator")} | {
        "node": node_user(cloud.settings.node_id)
    }
    assert {name: url.username for name, url in users.items()} == expected
    for name, url in users.items():
        assert url.password == cloud.nats.credentials.password(expected[name])
    assert len({url.password for url in users.values()}) == len(users)  # no two share a password


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
