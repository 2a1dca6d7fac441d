"""Operators' subcommands: `init`, `up` and `nats-auth`; `fail` and `run`, how every operator's
command ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg
import nats.errors
import typer

from nebula_core import config
from nebula_core.contract.errors import NebulaError


def fail(message: str, code: int = 1) -> None:
    """One line on stderr and a non-zero exit: the CLI never shows a traceback for a known failure."""
    typer.echo(f"nebula: {message}", err=True)
    raise typer.Exit(code)


def run(coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    try:
        return asyncio.run(coro_fn())
    except NebulaError as err:
        fail(err.message)
    except (ValueError, OSError, TimeoutError) as err:
        fail(str(err) or type(err).__name__)
    except (nats.errors.Error, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        fail(f"{type(err).__name__}: {err}")


def register(app: typer.Typer) -> None:
    @app.command()
    def init(
        nats_url: str = typer.Option(None, help="NATS server (default: NEBULA_NATS_URL)"),
        pg_dsn: str = typer.Option(None, help="Postgres DSN (default: NEBULA_PG_DSN)"),
    ) -> None:
        """Apply the JetStream topology and the Postgres migrations (idempotent)."""
        from nebula_core.allinone.init import initialize
        from nebula_core.allinone.nats_auth import operator_settings

        settings = config.load(nats_url=nats_url, pg_dsn=pg_dsn)
        if nats_url is None:
            settings = operator_settings(settings)
        for line in run(lambda: initialize(settings)):
            typer.echo(line)

    @app.command()
    def up(
        nats_url: str = typer.Option(None, help="Use this NATS instead of starting one"),
        pg_dsn: str = typer.Option(None, help="Use this Postgres instead of the embedded one"),
        state_dir: str = typer.Option(None, help="Where the embedded servers keep their data"),
        libvirt_uri: str = typer.Option(
            None, help="The node agent's libvirt (default qemu:///system; test:///default simulates)"
        ),
        demo: bool = typer.Option(False, "--demo", help="Also boot one nebula-tiny instance and print its console"),
    ) -> None:
        """Run a whole Nebula on this machine, in the foreground, until Ctrl-C."""
        from nebula_core.allinone.up import AllInOne

        settings = config.load(state_dir=state_dir)
        try:
            asyncio.run(AllInOne(settings, nats_url=nats_url, pg_dsn=pg_dsn, libvirt_uri=libvirt_uri, demo=demo).run())
        except KeyboardInterrupt:
            pass
        except (NebulaError, OSError, TimeoutError, RuntimeError) as err:
            fail(getattr(err, "message", str(err)))

    register_nats_auth(app)


def register_nats_auth(app: typer.Typer) -> None:
    auth = typer.Typer(
        help="NATS identities for a Nebula on several hosts: one user per role and per node.",
        no_args_is_help=True,
    )
    app.add_typer(auth, name="nats-auth")

    def credentials_dir(given: Path | None) -> Path:
        return given or Path(config.load().state_dir) / "nats" / "credentials"

    credentials_help = (
        "Where the passwords are kept, one file each, 0600 (default: <NEBULA_STATE_DIR>/nats/credentials)"
    )

    @auth.command("config")
    def auth_config(
        out: Path = typer.Option(..., "--out", help="The file nats.conf includes, e.g. /etc/nebula/nebula-users.conf"),
        nodes: list[str] = typer.Option([], "--node", help="A compute node's id (NEBULA_NODE_ID); repeat for each"),
        with_sim: bool = typer.Option(False, "--with-sim", help="Also the fleet simulator's user (`nebula sim`)"),
        credentials: Path = typer.Option(None, help=credentials_help),
    ) -> None:
        """Write nats-server's users and their permissions, generating missing passwords.
        Run it again (and reload nats-server) when a node joins."""
        from nebula_core.allinone.nats_auth import NatsCredentials
        from nebula_core.contract import permissions

        try:
            users = [
                permissions.ADMIN_USER,
                *permissions.CONTROL_ROLES,
                *([permissions.SIM_USER] if with_sim else []),
                *(permissions.node_user(n) for n in nodes),
            ]
            written = NatsCredentials(credentials_dir(credentials)).write_include(out, users)
        except (ValueError, OSError) as err:
            fail(str(err))
        typer.echo(f"wrote {written} ({len(users)} users); nats.conf includes it: include {written.name}")

    @auth.command("routes")
    def auth_routes(
        routes: list[str] = typer.Argument(..., help="Every server's route address, host:port (e.g. nats-1:6222)"),
        out: Path = typer.Option(
            ..., "--out", help="The file the cluster block includes: /etc/nebula/nebula-routes.conf"
        ),
        credentials: Path = typer.Option(None, help=credentials_help),
    ) -> None:
        """Write a cluster's routes with their password (the same file on every server)."""
        from nebula_core.allinone.nats_auth import NatsCredentials

        try:
            written = NatsCredentials(credentials_dir(credentials)).write_routes(out, routes)
        except (ValueError, OSError) as err:
            fail(str(err))
        typer.echo(f"wrote {written} ({len(routes)} routes); the cluster block includes it: include {written.name}")

    @auth.command("url")
    def auth_url(
        user: str = typer.Argument(..., help="api, orchestrator, projector, meta, admin, sim, or node-<node id>"),
        servers: str = typer.Option(
            ..., "--servers", help="The NATS servers, e.g. nats://nats-1:4222,nats://nats-2:4222"
        ),
        credentials: Path = typer.Option(None, help=credentials_help),
    ) -> None:
        """Print the NEBULA_NATS_URL of one role or node, with its password, for that host's
        /etc/nebula/nebula.env (keep it 0600)."""
        from nebula_core.allinone.nats_auth import NatsCredentials

        directory = credentials_dir(credentials)
        if not (directory / user).exists():
            fail(f"no password for {user!r} in {directory}: run `nebula nats-auth config` with it first")
        try:
            typer.echo(NatsCredentials(directory).url(servers, user))
        except ValueError as err:
            fail(str(err))
