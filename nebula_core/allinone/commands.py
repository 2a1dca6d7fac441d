"""Operators' subcommands: `init` and `up`; `fail` and `run`, how every operator's command ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
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
