"""`nebula user …`: people and their API tokens."""

from __future__ import annotations

from typing import Annotated

import typer

from nebula_core.cli import refs
from nebula_core.cli.session import Cli, Failed, command, group
from nebula_core.contract import http as shapes

app = group("user", "Users and their API tokens (a token is shown once: when its user is created, or it is rotated).")

UserArg = Annotated[str, typer.Argument(help="User name or id (names need a cloud admin's token).", show_default=False)]


def _print_user(cli: Cli, user: shapes.User) -> None:
    if cli.out.as_json:
        cli.out.json(user)
        return
    pairs = [("name", user.name), ("id", user.id), ("admin", user.is_admin), ("disabled", user.disabled)]
    cli.out.record([*pairs, ("token", user.token)] if user.token else [*pairs, ("created", user.created_at)])


@command(app, "create")
async def create(
    cli: Cli,
    name: Annotated[str, typer.Argument(help="The user's name.", show_default=False)],
    admin: Annotated[bool, typer.Option("--admin", help="Make the user a cloud administrator.")] = False,
) -> None:
    """Create a user and print their API token, once (cloud admins)."""
    user = await cli.api.post("/v1/users", shapes.UserCreate(name=name, is_admin=admin), shapes.User)
    _print_user(cli, user)
    cli.out.note("The token is shown this once: hand it to the user now (as NEBULA_TOKEN or in their config.toml).")


@command(app, "list")
async def list_(cli: Cli) -> None:
    """Every user (cloud admins)."""
    users = await cli.api.all("/v1/users", shapes.User)
    if cli.out.as_json:
        cli.out.json(users)
        return
    cli.out.table(
        ["NAME", "ID", "ADMIN", "DISABLED", "CREATED"],
        [[u.name, u.id, u.is_admin, u.disabled, u.created_at] for u in users],
        empty="No users.",
    )


@command(app, "whoami")
async def whoami(cli: Cli) -> None:
    """Who your token belongs to (the bootstrap admin is not a user: no id)."""
    me = await cli.api.get("/v1/users/me", shapes.Me)
    if cli.out.as_json:
        cli.out.json(me)
        return
    cli.out.record([("name", me.name), ("id", me.id), ("admin", me.is_admin)])


async def _patch(cli: Cli, user: str, disabled: bool) -> shapes.User:
    user_id = await refs.user_id(cli.api, user)
    return await cli.api.patch(f"/v1/users/{user_id}", shapes.UserPatch(disabled=disabled), shapes.User)


@command(app, "disable")
async def disable(cli: Cli, user: UserArg) -> None:
    """Refuse a user's token from now on, until `nebula user enable` (cloud admins); memberships stay."""
    found = await _patch(cli, user, disabled=True)
    if cli.out.as_json:
        cli.out.json(found)
    else:
        cli.out.line(f"{found.name} is disabled: their token is refused until they are enabled.")


@command(app, "enable")
async def enable(cli: Cli, user: UserArg) -> None:
    """Let a disabled user's token work again (cloud admins)."""
    found = await _patch(cli, user, disabled=False)
    if cli.out.as_json:
        cli.out.json(found)
    else:
        cli.out.line(f"{found.name} is enabled: their token works.")


@command(app, "delete")
async def delete(cli: Cli, user: UserArg) -> None:
    """Delete a user: their token stops working and their memberships go (cloud admins)."""
    user_id = await refs.user_id(cli.api, user)
    await cli.api.delete(f"/v1/users/{user_id}")
    if cli.out.as_json:
        cli.out.json({"id": user_id, "deleted": True})
    else:
        cli.out.note(f"Deleted user {user} ({user_id}).")


@command(app, "rotate-token")
async def rotate_token(
    cli: Cli,
    user: Annotated[
        str | None,
        typer.Argument(help="User name or id (cloud admins); yours when not given.", show_default=False),
    ] = None,
) -> None:
    """Give a user a new token and print it, once; the old one stops working at once."""
    if user is None:
        me = await cli.api.get("/v1/users/me", shapes.Me)
        if me.id is None:
            raise Failed("the bootstrap admin's token is the operator's NEBULA_ADMIN_TOKEN: change it there")
        user_id = me.id
    else:
        user_id = await refs.user_id(cli.api, user)
    rotated = await cli.api.post(f"/v1/users/{user_id}/token", None, shapes.User)
    _print_user(cli, rotated)
    mine = "; yours: put it in NEBULA_TOKEN or your config.toml" if user is None else ""
    cli.out.note(f"The new token is shown this once, and the old one no longer works{mine}.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, rich_help_panel="Using the cloud")
