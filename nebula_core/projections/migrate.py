"""Postgres migrations: plain SQL files in `ops/migrations/`, applied in order, each once.

A file `NNNN_name.sql` runs inside one transaction together with the row that records
it in `nebula_migrations`, so a migration is either wholly applied and recorded or not at
all. A session advisory lock serialises concurrent `nebula init`s. Each recorded migration keeps
its file's sha256; an applied file that later changed is reported, never re-run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
#: An arbitrary, fixed key for pg_advisory_xact_lock: "nebula" in ASCII.
_LOCK_KEY = 0x6E6562756C61


class MigrationError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in `directory`, ordered by version; a malformed or repeated name is an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_case.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        found[version] = Migration(version, match.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


async def apply(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is missing; returns one line per migration: applied or already applied."""
    migrations = discover() if migrations is None else migrations
    report = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS nebula_migrations (
                   version    integer     PRIMARY KEY,
                   name       text        NOT NULL,
                   sha256     text        NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now()
               )"""
        )
        applied = {r["version"]: r for r in await conn.fetch("SELECT version, name, sha256 FROM nebula_migrations")}
        for migration in migrations:
            report.append(await _apply_one(conn, migration, applied.get(migration.version)))
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return report


async def _apply_one(conn: asyncpg.Connection, migration: Migration, done: asyncpg.Record | None) -> str:
    label = f"migration {migration.version:04d}_{migration.name}"
    if done is not None:
        if done["sha256"] != migration.sha256:
            raise MigrationError(f"{label} was applied, but its file has changed since; write a new migration")
        return f"{label}: already applied"
    async with conn.transaction():
        try:
            await conn.execute(migration.sql)
        except asyncpg.PostgresError as err:
            raise MigrationError(f"{label} failed: {err}") from err
        await conn.execute(
            "INSERT INTO nebula_migrations (version, name, sha256) VALUES ($1, $2, $3)",
            migration.version,
            migration.name,
            migration.sha256,
        )
    return f"{label}: applied"
