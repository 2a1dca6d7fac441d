"""`nebula schemas`: check or regenerate the published contract."""

from __future__ import annotations

from pathlib import Path

import typer

from nebula_core.devtools import schemas as gen


def schemas(*, write: bool, out: str | None) -> None:
    """Compare `out` (default ./schemas) with what the code generates; with `write`, rewrite it."""
    root = Path(out) if out else Path.cwd() / "schemas"
    if write:
        changed = gen.write(root)
        typer.echo("\n".join(changed) if changed else f"{root} already up to date")
        return
    drift = gen.drift(root)
    if drift:
        typer.echo("\n".join(drift), err=True)
        typer.echo(f"nebula: {root} differs from the code: run `nebula schemas --write`", err=True)
        raise typer.Exit(1)
    typer.echo(f"{root} matches the code")
