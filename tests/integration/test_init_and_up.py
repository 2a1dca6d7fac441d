"""The operator's first commands, run as an operator runs them: as processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import nats

from nebula_core.embedded import NatsServer, free_port

NEBULA = [sys.executable, "-m", "nebula_core.cli"]


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
    env = {**os.environ, "NEBULA_STATE_DIR": str(tmp_path / "state"), "NEBULA_NATS_URL": f"nats://127.0.0.1:{port}",
           "NEBULA_API_LISTEN": f"127.0.0.1:{api_port}", "NEBULA_META_LISTEN": f"127.0.0.1:{meta_port}"}
    env.pop("NEBULA_PG_DSN", None)
    proc = subprocess.Popen([*NEBULA, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = _read_until(proc, "Ctrl-C stops everything.", timeout=90)
        dsn = next(line.split(":", 1)[1].strip() for line in banner if line.strip().startswith("Postgres:"))
        token_line = next(line for line in banner if "admin token:" in line)
        token = token_line.split(":", 1)[1].strip()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{api_port}/healthz") as health:
                assert health.status == 200
            async with http.get(f"http://127.0.0.1:{meta_port}/healthz") as meta_health:
                assert meta_health.status == 200
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(f"http://127.0.0.1:{api_port}/v1/projects", json={"name": "first"},
                                 headers=headers) as created:
                assert created.status == 201
            async with http.get(f"http://127.0.0.1:{api_port}/v1/projects", headers=headers) as listed:
                names = [p["name"] for p in (await listed.json())["items"]]

        client = await nats.connect(f"nats://127.0.0.1:{port}")
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

    assert {"NEBULA_EVENTS", "NEBULA_COMMANDS", "KV_nebula_nodes", "KV_nebula_userdata"} <= streams
    assert migrations >= 1
    assert names == ["first"]  # the API answered from the read models the projector keeps
    assert len(token_line.split(":", 1)[1].strip()) >= 32
    assert code == 0
    assert (tmp_path / "state" / "admin-token").stat().st_mode & 0o777 == 0o600


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
    try:
        from nebula_core.contract.types import Quotas
        from nebula_core.domain import AGGREGATES, Project
        from nebula_core.domain.codec import Codec
        from nebula_core.eventstore import EventStore

        store = EventStore(client.jetstream(), Codec(*AGGREGATES))
        for name in ("a", "b", "c"):
            await store.save(Project(name=name, description="", tags={}, quotas=Quotas()))
    finally:
        await client.close()

    result = nebula("replay", env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "read models rebuilt from sequence 1 to 3"
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert sorted(r["name"] for r in await conn.fetch("SELECT name FROM projects")) == ["a", "b", "c"]
    finally:
        await conn.close()
