"""`nebula image …`: what instances boot from."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated
from urllib.parse import urlparse

import typer

from nebula_core.cli import refs
from nebula_core.cli.session import Cli, command, group
from nebula_core.contract import http as shapes
from nebula_core.contract.types import ImageFormat

app = group("image", "Images instances boot from: a direct-kernel manifest or a qcow2 cloud image.")

ImageArg = Annotated[str, typer.Argument(help="Image name or id.", show_default=False)]


def local_file(source: str) -> Path | None:
    """The file a source names on this machine (a path or a file:// URL), if it does."""
    if source.startswith("/"):
        return Path(source)
    parsed = urlparse(source)
    return Path(parsed.path) if parsed.scheme == "file" else None


def digest(path: Path) -> tuple[str, int]:
    """The sha256 and size of a file, read in chunks."""
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def print_images(cli: Cli, images: list[shapes.Image]) -> None:
    if cli.out.as_json:
        cli.out.json(images)
        return
    cli.out.table(
        ["NAME", "ID", "FORMAT", "SIZE", "MIN_DISK_GB", "SHA256", "SOURCE", "CREATED"],
        [[i.name, i.id, i.format, i.size, i.min_disk_gb, i.sha256[:12], i.source, i.created_at] for i in images],
        empty="No images.",
    )


def print_image(cli: Cli, image: shapes.Image) -> None:
    if cli.out.as_json:
        cli.out.json(image)
        return
    cli.out.record(
        [
            ("name", image.name),
            ("id", image.id),
            ("format", image.format),
            ("source", image.source),
            ("sha256", image.sha256),
            ("size", image.size),
            ("min_disk_gb", image.min_disk_gb),
            ("default_user", image.default_user),
            ("created", image.created_at),
        ]
    )


@command(app, "create")
async def create(
    cli: Cli,
    name: Annotated[
        str, typer.Argument(help="The image's name (instances may ask for it by name).", show_default=False)
    ],
    image_format: Annotated[ImageFormat, typer.Option("--format", help="How it boots.", show_default=False)],
    source: Annotated[
        str, typer.Option(help="Where nodes fetch it: a path, file:// or http(s):// URL.", show_default=False)
    ],
    sha256: Annotated[
        str | None,
        typer.Option(
            help="sha256 of the source's bytes; computed (with --size) when the source is a file on this machine.",
            show_default=False,
        ),
    ] = None,
    size: Annotated[int | None, typer.Option(help="Size in bytes (0: unknown).", show_default=False)] = None,
    min_disk: Annotated[int, typer.Option(help="Smallest disk, in GiB, an instance of it may have.")] = 0,
    default_user: Annotated[
        str, typer.Option(help="The user its cloud-init gives keypairs to (nebula instance ssh logs in as it).")
    ] = "",
) -> None:
    """Register an image (cloud admins)."""
    if sha256 is None:
        path = local_file(source)
        if path is None:
            raise typer.BadParameter("needed when the source is not a file on this machine", param_hint="--sha256")
        try:
            sha256, measured = digest(path)
        except OSError as err:
            raise typer.BadParameter(
                f"cannot read {path} to compute --sha256: {err.strerror}", param_hint="--source"
            ) from None
        size = measured if size is None else size
    body = shapes.ImageCreate(
        name=name,
        format=image_format,
        source=source,
        sha256=sha256,
        size=size or 0,
        min_disk_gb=min_disk,
        default_user=default_user,
    )
    print_image(cli, await cli.api.post("/v1/images", body, shapes.Image))


@command(app, "list")
async def list_(cli: Cli) -> None:
    """The images."""
    print_images(cli, await cli.api.all("/v1/images", shapes.Image))


@command(app, "show")
async def show(cli: Cli, image: ImageArg) -> None:
    """One image."""
    print_image(cli, await refs.image(cli.api, image))


@command(app, "delete")
async def delete(cli: Cli, image: ImageArg) -> None:
    """Remove an image (cloud admins)."""
    found = await refs.image(cli.api, image)
    await cli.api.delete(f"/v1/images/{found.id}")
    cli.out.note(f"Deleted image {found.name} ({found.id}).")


def register(root: typer.Typer) -> None:
    root.add_typer(app, rich_help_panel="Using the cloud")
