"""`nebula init`'s Postgres half against a real Postgres."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from nebula_core.projections import migrate


async def test_migrations_apply_once_in_order(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        first = await migrate.apply(conn)
        second = await migrate.apply(conn)
        recorded = await conn.fetch("SELECT version FROM nebula_migrations ORDER BY version")
        checkpoints = await conn.fetchval("SELECT to_regclass('projection_checkpoints')")
    finally:
        await conn.close()

    assert first and all(line.endswith(": applied") for line in first)
    assert all(line.endswith(": already applied") for line in second)
    assert [r["version"] for r in recorded] == [m.version for m in migrate.discover()]
    assert checkpoints == "projection_checkpoints"


def _write(directory: Path, name: str, sql: str) -> None:
    (directory / name).write_text(sql)


async def test_a_failing_migration_is_not_recorded_and_earlier_ones_stay(pg_dsn: str, tmp_path: Path) -> None:
    _write(tmp_path, "0001_good.sql", "CREATE TABLE good (id int);")
    _write(tmp_path, "0002_bad.sql", "CREATE TABLE bad (id int); SELECT no_such_function();")
    conn = await asyncpg.connect(pg_dsn)
    try:
        with pytest.raises(migrate.MigrationError, match="0002_bad failed"):
            await migrate.apply(conn, migrate.discover(tmp_path))
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM nebula_migrations")]
        bad_table = await conn.fetchval("SELECT to_regclass('bad')")
    finally:
        await conn.close()

    assert versions == [1]
    assert bad_table is None  # the failed file left nothing behind


async def test_an_edited_applied_migration_is_refused(pg_dsn: str, tmp_path: Path) -> None:
    _write(tmp_path, "0001_one.sql", "CREATE TABLE one (id int);")
    conn = await asyncpg.connect(pg_dsn)
    try:
        await migrate.apply(conn, migrate.discover(tmp_path))
        _write(tmp_path, "0001_one.sql", "CREATE TABLE one (id bigint);")
        with pytest.raises(migrate.MigrationError, match="has changed"):
            await migrate.apply(conn, migrate.discover(tmp_path))
    finally:
        await conn.close()


def test_badly_named_migration_files_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, "1_oops.sql", "SELECT 1;")
    with pytest.raises(migrate.MigrationError, match="NNNN_snake_case"):
        migrate.discover(tmp_path)
