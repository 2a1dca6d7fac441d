"""`nebula keypair …`: your SSH public keys, by name, for the instances you create."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nebula_core.cli.session import Cli, command, group
from nebula_core.contract import http as shapes

app = group("keypair", "Your SSH keypairs: their public keys go into the instances you create with --keypair.")

NameArg = Annotated[str, typer.Argument(help="The keypair's name.", show_default=False)]


def print_keypair(cli: Cli, keypair: shapes.Keypair) -> None:
    if cli.out.as_json:
        cli.out.json(keypair)
        return
    cli.out.record(
        [
            ("name", keypair.name),
            ("id", keypair.id),
            ("fingerprint", keypair.fingerprint),
            ("public_key", keypair.public_key),
            ("created", keypair.created_at),
        ]
    )


async def by_name(cli: Cli, name: str) -> shapes.Keypair:
    for keypair in await cli.api.all("/v1/keypairs", shapes.Keypair):
        if keypair.name == name or str(keypair.id) == name:
            return keypair
    raise typer.BadParameter(f"you have no keypair named {name!r}", param_hint="NAME")


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """The private key in OpenSSH's format, 0600, never over an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise typer.BadParameter(f"{path} exists; choose another --out", param_hint="--out") from None
    with os.fdopen(fd, "wb") as out:
        out.write(data)


@command(app, "create")
async def create(
    cli: Cli,
    name: NameArg,
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the private key (default: ~/.ssh/nebula-<name>).", show_default=False),
    ] = None,
) -> None:
    """Make a new ed25519 keypair: the private key stays here (0600), its public key is added."""
    path = out or Path.home() / ".ssh" / f"nebula-{name}"
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write_private_key(path, key)
    try:
        keypair = await cli.api.post(
            "/v1/keypairs", shapes.KeypairCreate(name=name, public_key=f"{public.decode()} {name}"), shapes.Keypair
        )
    except BaseException:
        path.unlink(missing_ok=True)  # no private key without its public half in the cloud
        raise
    Path(f"{path}.pub").write_text(keypair.public_key + "\n")
    print_keypair(cli, keypair)
    cli.out.note(f"Private key: {path} (ssh -i {path} …).")


@command(app, "import")
async def import_(
    cli: Cli,
    name: NameArg,
    public_key: Annotated[
        typer.FileText, typer.Option("--public-key", help="An OpenSSH public key file (e.g. ~/.ssh/id_ed25519.pub).")
    ],
) -> None:
    """Add an existing public key of yours."""
    text = public_key.read().strip()
    print_keypair(
        cli, await cli.api.post("/v1/keypairs", shapes.KeypairCreate(name=name, public_key=text), shapes.Keypair)
    )


@command(app, "list")
async def list_(cli: Cli) -> None:
    """Your keypairs."""
    found = await cli.api.all("/v1/keypairs", shapes.Keypair)
    if cli.out.as_json:
        cli.out.json(found)
        return
    cli.out.table(
        ["NAME", "ID", "FINGERPRINT", "CREATED"],
        [[k.name, k.id, k.fingerprint, k.created_at] for k in found],
        empty="No keypairs.",
    )


@command(app, "delete")
async def delete(cli: Cli, name: NameArg) -> None:
    """Remove one of your keypairs (instances created with it keep its key)."""
    found = await by_name(cli, name)
    await cli.api.delete(f"/v1/keypairs/{found.id}")
    cli.out.note(f"Deleted keypair {found.name} ({found.id}).")


def register(root: typer.Typer) -> None:
    root.add_typer(app, rich_help_panel="Using the cloud")
