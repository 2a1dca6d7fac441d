"""`nebula user …`: people and their API tokens."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nebula_core.cli.session import Cli, command, group
from nebula_core.contract import http as shapes

app = group("user", "Users and their API tokens (a token is shown once, when its user is created).")


@command(app, "create")
async def create(
    cli: Cli,
    name: Annotated[str, typer.Argument(help="The user's name.", show_default=False)],
    admin: Annotated[bool, typer.Option("--admin", help="Make the user a cloud administrator.")] = False,
) -> None:
    """Create a user and print their API token, once (cloud admins)."""
    user = await cli.api.post("/v1/users", shapes.UserCreate(name=name, is_admin=admin), shapes.User)
    if cli.out.as_json:
        cli.out.json(user)
        return
    cli.out.record([("name", user.name), ("id", user.id), ("admin", user.is_admin), ("token", user.token)])
    cli.out.note("The token is shown this once: hand it to the user now (as NEBULA_TOKEN or in their config.toml).")


@command(app, "list")
async def list_(cli: Cli) -> None:
    """Every user (cloud admins)."""
    users = await cli.api.all("/v1/users", shapes.User)
    if cli.out.as_json:
        cli.out.json(users)
        return
    cli.out.table(
        ["NAME", "ID", "ADMIN", "CREATED"], [[u.name, u.id, u.is_admin, u.created_at] for u in users], empty="No users."
    )


@command(app, "whoami")
async def whoami(cli: Cli) -> None:
    """Who your token belongs to."""
    # The bootstrap admin is not a user (no id, no creation time): read the answer as it is.
    me = await cli.api.get("/v1/users/me", dict[str, Any])
    if cli.out.as_json:
        cli.out.json(me)
        return
    cli.out.record([("name", me.get("name")), ("id", me.get("id")), ("admin", bool(me.get("is_admin")))])


def register(root: typer.Typer) -> None:
    root.add_typer(app, rich_help_panel="Using the cloud")
