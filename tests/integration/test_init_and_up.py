"""The operator's first commands, run as an operator runs them: as processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import asyncpg
import nats
import nats.errors
import psutil
import pytest
from pgserver.utils import PostmasterInfo

from nebula_core.allinone.embedded import NatsServer, free_port
from nebula_core.allinone.nats_auth import NatsCredentials
from nebula_core.contract import permissions
from nebula_core.contract.permissions import node_user
from nebula_core.contract.types import Quotas
from nebula_core.domain import AGGREGATES, Project
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from nebula_core.nats_client import identity_options
from nebula_core.projections import database
from nebula_core.projections.checkpoint import checkpoint
from nebula_core.projections.handlers import TABLES
from nebula_core.projections.projector import Projector
from tests.integration.test_projector import assert_every_table_has_rows, dump, last_seq, seed_everything
from tests.support import eventually

NEBULA = [sys.executable, "-m", "nebula_core"]


def nebula(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NEBULA, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_init_applies_everything_then_changes_nothing(nats_server: NatsServer, pg_dsn: str) -> None:
    first = nebula("init", "--nats-url", nats_server.url, "--pg-dsn", pg_dsn)
    second = nebula("init", env={"NEBULA_NATS_URL": nats_server.url, "NEBULA_PG_DSN": pg_dsn})

    assert first.returncode == 0, first.stderr
    assert "stream NEBULA_EVENTS: created" in first.stdout
    assert "migration 0001_projection_checkpoints: applied" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "stream NEBULA_EVENTS: unchanged" in second.stdout
    assert "migration 0001_projection_checkpoints: already applied" in second.stdout
    assert "created" not in second.stdout.replace("unchanged", "")


def test_init_against_no_server_is_one_clear_line(pg_dsn: str) -> None:
    result = nebula("init", "--nats-url", f"nats://127.0.0.1:{free_port()}", "--pg-dsn", pg_dsn)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nebula: ")
    assert "Traceback" not in result.stderr


def test_init_without_postgres_says_what_to_set(nats_server: NatsServer) -> None:
    result = nebula("init", "--nats-url", nats_server.url, env={"NEBULA_PG_DSN": ""})
    assert result.returncode == 1
    assert "NEBULA_PG_DSN" in result.stderr


async def test_up_brings_nats_and_postgres_up_with_everything_applied(tmp_path: Path) -> None:
    port, api_port, meta_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "NEBULA_STATE_DIR": str(tmp_path / "state"),
        "NEBULA_NATS_URL": f"nats://127.0.0.1:{port}",
        "NEBULA_API_LISTEN": f"127.0.0.1:{api_port}",
        "NEBULA_META_LISTEN": f"127.0.0.1:{meta_port}",
        "NEBULA_LIBVIRT_URI": "test:///default",  # a simulated node: no guest runs here
    }
    env.pop("NEBULA_PG_DSN", None)
    proc = subprocess.Popen([*NEBULA, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = _read_until(proc, "Ctrl-C stops everything.", timeout=90)
        # Neither is printed: the token is in its file, the embedded Postgres is found by its data.
        token = (tmp_path / "state" / "admin-token").read_text().strip()
        info = PostmasterInfo.read_from_pgdata(tmp_path / "state" / "postgres")
        assert info is not None
        dsn = info.get_uri()
        token_line = next(line for line in banner if "admin token:" in line)
        handed = {
            role: _environment_of(proc.pid, role) for role in ("api", "meta", "node", "projector", "orchestrator")
        }
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{api_port}/healthz") as health:
                assert health.status == 200
            async with http.get(f"http://127.0.0.1:{meta_port}/healthz") as meta_health:
                assert meta_health.status == 200
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(
                f"http://127.0.0.1:{api_port}/v1/projects", json={"name": "first"}, headers=headers
            ) as created:
                assert created.status == 201
                project_id = (await created.json())["id"]
            async with http.get(f"http://127.0.0.1:{api_port}/v1/projects", headers=headers) as listed:
                names = [p["name"] for p in (await listed.json())["items"]]

            async def node_registered() -> list[str]:
                # The node (its own NATS identity) registered through the orchestrator (its own).
                async with http.get(f"http://127.0.0.1:{api_port}/v1/nodes", headers=headers) as answer:
                    return [n["id"] for n in (await answer.json())["items"] if n["alive"]]

            nodes = await eventually(node_registered, timeout=30, interval=0.5)

            # A create goes the whole way, each role with its own identity: the API's
            # command, the orchestrator's placement, the node's domain and report.
            body = {"project_id": project_id, "name": "vm1", "vcpus": 1, "ram_mb": 256, "disk_gb": 1}
            async with http.post(
                f"http://127.0.0.1:{api_port}/v1/instances", json={**body, "image": "nebula-tiny"}, headers=headers
            ) as accepted:
                assert accepted.status == 202, await accepted.text()
                instance_id = (await accepted.json())["id"]

            async def running() -> bool:
                async with http.get(f"http://127.0.0.1:{api_port}/v1/instances/{instance_id}", headers=headers) as got:
                    state = (await got.json())["state"]
                    assert state != "error", await got.text()
                    return bool(state == "running")

            await eventually(running, timeout=60, interval=0.5)

        with pytest.raises((nats.errors.NoServersError, nats.errors.Error, OSError)):  # no anonymous client
            await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False, connect_timeout=2)
        credentials = NatsCredentials(tmp_path / "state" / "nats" / "credentials")
        admin_url = credentials.url(f"nats://127.0.0.1:{port}", permissions.ADMIN_USER)
        client = await nats.connect(admin_url, **identity_options(admin_url))
        try:
            streams = {s.config.name for s in await client.jetstream().streams_info()}
        finally:
            await client.close()
        conn = await asyncpg.connect(dsn)
        try:
            migrations = await conn.fetchval("SELECT count(*) FROM nebula_migrations")
        finally:
            await conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    said = "\n".join(banner) + (proc.stdout.read() if proc.stdout else "") + (proc.stderr.read() if proc.stderr else "")
    logs = "".join(path.read_text(errors="replace") for path in (tmp_path / "state" / "logs").glob("*.log"))

    assert {"NEBULA_EVENTS", "NEBULA_COMMANDS", "KV_nebula_nodes", "KV_nebula_userdata"} <= streams
    assert migrations >= 1
    assert names == ["first"]  # the API answered from the read models the projector keeps
    assert len(token) >= 32
    assert str(tmp_path / "state" / "admin-token") in token_line
    assert token not in said and token not in logs  # printed nowhere, logged nowhere
    assert handed["api"]["NEBULA_ADMIN_TOKEN"] == token  # the API's alone
    assert [role for role, env in handed.items() if "NEBULA_ADMIN_TOKEN" in env] == ["api"]
    assert "NEBULA_PG_DSN" not in handed["meta"] and "NEBULA_PG_DSN" not in handed["node"]
    assert code == 0
    assert (tmp_path / "state" / "admin-token").stat().st_mode & 0o777 == 0o600
    # Each child its own NATS identity, whose password is printed and logged nowhere.
    users = {role: urlparse(env["NEBULA_NATS_URL"]).username for role, env in handed.items()}
    node_id = handed["node"]["NEBULA_NODE_ID"]
    assert nodes == [node_id]
    assert users == {r: r for r in ("api", "meta", "projector", "orchestrator")} | {"node": node_user(node_id)}
    for role, user in users.items():
        password = credentials.password(str(user))
        assert urlparse(handed[role]["NEBULA_NATS_URL"]).password == password
        assert password not in said and password not in logs
        assert (credentials.directory / str(user)).stat().st_mode & 0o777 == 0o600


def _environment_of(up_pid: int, role: str) -> dict[str, str]:
    """The environment `nebula up` (process `up_pid`) handed its child running `role`."""
    child = next(
        p
        for p in psutil.Process(up_pid).children(recursive=True)
        if p.cmdline()[-1:] == [role] and "nebula_core" in p.cmdline()
    )
    return dict(child.environ())


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"nebula up exited early: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}")
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} within {timeout}s: {lines}")


async def test_replay_rebuilds_from_the_command_line(nats_server: NatsServer, pg_dsn: str) -> None:
    env = {"NEBULA_NATS_URL": nats_server.url, "NEBULA_PG_DSN": pg_dsn}
    assert nebula("init", env=env).returncode == 0
    client = await nats.connect(nats_server.url)
    pool = await database.create_pool(pg_dsn, min_size=1, max_size=4)
    try:
        js = client.jetstream()
        store = EventStore(js, Codec(*AGGREGATES))
        for name in ("a", "b", "c"):
            await store.save(Project(name=name, description="", tags={}, quotas=Quotas()))
        await seed_everything(store, copies=2)
        target = await last_seq(js)
        # The live read models, as a projector keeps them.
        stop = asyncio.Event()
        projector = asyncio.create_task(Projector(js, pool).run(stop))
        try:
            await eventually(lambda: _checkpoint_at(pool, target))
        finally:
            stop.set()
            await projector
        live = await dump(pool)
        await assert_every_table_has_rows(pool)
        # Damage every table; the replay must put all of it back.
        await pool.execute("UPDATE projects SET name = 'vandalised'")
        await pool.execute("DELETE FROM memberships")
        await pool.execute("DELETE FROM node_claims")
        await pool.execute("UPDATE nodes SET alloc_vcpus = 0, down = NOT down")
        await pool.execute("UPDATE instances SET state = 'pending', node_id = NULL")
        await pool.execute("DELETE FROM images WHERE deleted")
        await pool.execute("UPDATE users SET is_admin = NOT is_admin")
        assert await dump(pool) != live

        result = await asyncio.to_thread(nebula, "replay", env=env)

        rebuilt = await dump(pool)
        replayed_to = await checkpoint(pool)
    finally:
        await pool.close()
        await client.close()

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"read models rebuilt from sequence 1 to {target}"
    assert {"a", "b", "c"} <= {row[1] for row in rebuilt["projects"]}  # (id, name, ...)
    assert set(rebuilt) == set(live) == set(TABLES)
    for table in TABLES:
        assert rebuilt[table] == live[table], table
    assert replayed_to == target


async def _checkpoint_at(pool: asyncpg.Pool, seq: int) -> bool:
    return await checkpoint(pool) >= seq
