"""The long-running roles (`projector`, `api`, `meta`, `orchestrator`, …) and the operator's `replay`."""

from __future__ import annotations

import asyncio

import typer

from nebula_core import config
from nebula_core.cli.admin import run
from nebula_core.runtime import connections, run_role


def register(app: typer.Typer) -> None:
    @app.command()
    def projector() -> None:
        """Project the event stream into the Postgres read models (run one or more)."""
        from nebula_core.projector import Projector

        settings = config.load()

        async def main(stop: asyncio.Event) -> None:
            async with connections(settings, "projector") as (nc, pool):
                assert pool is not None
                await Projector(nc.jetstream(), pool).run(stop)

        run_role("projector", main)

    @app.command()
    def api() -> None:
        """Serve the HTTP API (NEBULA_API_LISTEN, default 127.0.0.1:8774)."""
        from nebula_core.api.app import serve

        settings = config.load()
        if not settings.admin_token:
            typer.echo("nebula api: NEBULA_ADMIN_TOKEN is not set; only user tokens will be accepted", err=True)
        run_role("api", lambda stop: serve(settings, stop))

    @app.command()
    def meta() -> None:
        """Serve cloud-init NoCloud data to booting VMs (NEBULA_META_LISTEN, default 127.0.0.1:8775)."""
        from nebula_meta.app import serve

        settings = config.load()
        run_role("meta", lambda stop: serve(settings, stop))

    @app.command()
    def orchestrator() -> None:
        """Place instances and drive their lifecycle on the nodes (run one or more)."""
        from nebula_core.orchestrator.service import run as serve

        settings = config.load()
        run_role("orchestrator", lambda stop: serve(settings, stop))

    @app.command()
    def replay() -> None:
        """Rebuild every read model from the first event of the stream."""
        from nebula_core.projector import replay as rebuild

        settings = config.load()

        async def main() -> int:
            async with connections(settings, "replay") as (nc, pool):
                assert pool is not None
                return await rebuild(nc.jetstream(), pool)

        last = run(main)
        typer.echo(f"read models rebuilt from sequence 1 to {last}")
