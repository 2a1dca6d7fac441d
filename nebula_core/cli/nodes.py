"""`nebula node …`: the compute nodes, what they offer and what is claimed of it (cloud admins)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from nebula_core.cli.session import Cli, command, group
from nebula_core.contract import http as shapes

app = group(
    "node",
    "Alone, `nebula node` runs this host's compute-node agent (NEBULA_NODE_ID, NEBULA_REGION, "
    "NEBULA_LIBVIRT_URI, ...). Its subcommands show the compute nodes: capacity, what is allocated, "
    "and whether they are alive (cloud admins).",
    runs_alone=True,
)


#: What `nebula node` alone runs: the compute-node agent, given by the program that
#: assembles the command line (the CLI itself runs no service).
_run_alone: list[Callable[[], None]] = []


@app.callback()
def agent(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        for run in _run_alone:
            run()


#: (column, capacity/allocation key, overcommit key) for each resource.
_RESOURCES = (("VCPUS", "vcpus", "cpu"), ("RAM_MB", "ram_mb", "ram"), ("DISK_GB", "disk_gb", "disk"))


def status(node: shapes.Node) -> str:
    """`up` (heartbeating), `down` (marked down by the orchestrator) or `silent` (no heartbeat)."""
    if node.down:
        return "down"
    return "up" if node.alive else "silent"


def claimed(node: shapes.Node, resource: str, ratio_key: str) -> str:
    """`allocated/capacity`, with the overcommit ratio when it is not 1."""
    ratio = node.overcommit.get(ratio_key, 1.0)
    text = f"{node.allocated.get(resource, 0)}/{node.capacity.get(resource, 0)}"
    return text if ratio == 1.0 else f"{text} (x{ratio:g})"


@command(app, "list")
async def list_(
    cli: Cli,
    region: Annotated[str | None, typer.Option(help="Only in this region.", show_default=False)] = None,
) -> None:
    """Every node with its allocation of each resource (allocated/capacity, x overcommit)."""
    nodes = await cli.api.all("/v1/nodes", shapes.Node, {"region": region} if region else {})
    if cli.out.as_json:
        cli.out.json(nodes)
        return
    cli.out.table(
        ["ID", "REGION", "STATUS", *(column for column, _, _ in _RESOURCES), "INSTANCES", "AGENT", "HEARTBEAT"],
        [
            [
                n.id,
                n.region,
                status(n),
                *(claimed(n, r, k) for _, r, k in _RESOURCES),
                n.instances,
                n.agent_version,
                n.last_heartbeat,
            ]
            for n in nodes
        ],
        empty="No nodes.",
    )


def register(root: typer.Typer, *, node_agent: Callable[[], None] | None = None) -> None:
    if node_agent is not None:
        _run_alone[:] = [node_agent]
    root.add_typer(app, rich_help_panel="Using the cloud")
