"""The long-running roles (`projector`, `api`, `meta`, `orchestrator`, …) and the operator's `replay`."""

from __future__ import annotations

import asyncio
import json

import typer

from nebula_core import config
from nebula_core.allinone.commands import run
from nebula_core.allinone.nats_auth import operator_settings
from nebula_core.allinone.runtime import connections, run_role
from nebula_core.contract.permissions import SIM_USER


def node_agent() -> None:
    """`nebula node` (the `node` group without a subcommand): this host's agent."""
    from nebula_node.agent import run as serve

    settings = config.load()
    run_role("node", lambda stop: serve(settings, stop))


def register(app: typer.Typer) -> None:
    @app.command()
    def projector() -> None:
        """Project the event stream into the Postgres read models (run one or more)."""
        from nebula_core.projections.projector import Projector

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
    def sim(
        nodes: int = typer.Option(..., "--nodes", min=1, max=10_000, help="How many nodes to simulate."),
        region: str | None = typer.Option(None, help="Their region (default: NEBULA_REGION)."),
        vcpus: int = typer.Option(32, min=1, help="vCPUs per node."),
        ram_mb: int = typer.Option(131072, "--ram-mb", min=64, help="RAM per node, MiB."),
        disk_gb: int = typer.Option(2000, "--disk-gb", min=1, help="Disk per node, GiB."),
        prefix: str = typer.Option("sim", help="Node ids are <prefix>-0001, <prefix>-0002, ..."),
        create_delay: float = typer.Option(
            0.0, "--create-delay", min=0.0, help="Seconds each create takes, standing for an image fetch."
        ),
    ) -> None:
        """Simulate a fleet of compute nodes on libvirt's test driver: real agents on real NATS, no guests."""
        from nebula_core.contract.types import Resources
        from nebula_node.sim import run_sim

        settings = operator_settings(config.load(), user=SIM_USER)
        capacity = Resources(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb)
        run_role(
            "sim",
            lambda stop: run_sim(
                settings, nodes, stop, capacity=capacity, region=region, name_prefix=prefix, create_delay=create_delay
            ),
        )

    @app.command()
    def replay(
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Rebuild every read model from the first event of the stream."""
        from nebula_core.projections.projector import replay as rebuild

        settings = operator_settings(config.load())

        async def main() -> int:
            async with connections(settings, "replay", once=True) as (nc, pool):
                assert pool is not None
                return await rebuild(nc.jetstream(), pool)

        last = run(main)
        if as_json:
            typer.echo(json.dumps({"rebuilt_from": 1, "rebuilt_to": last}))
        else:
            typer.echo(f"read models rebuilt from sequence 1 to {last}")
