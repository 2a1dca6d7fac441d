"""The users' `nebula` commands: the one HTTP client of the API (projects, users, images,
instances, nodes, events). The operators' commands are added by `nebula_core.main`."""

from __future__ import annotations

from collections.abc import Callable

import typer

from nebula_core.cli import events, images, instances, keypairs, nodes, projects, users


def register(app: typer.Typer, *, node_agent: Callable[[], None] | None = None) -> None:
    """Add the users' command groups to `app`; `node_agent` is what `nebula node` alone runs."""
    for using_the_cloud in (projects, users, images, keypairs, instances, events):
        using_the_cloud.register(app)
    nodes.register(app, node_agent=node_agent)
