"""`nebula`: the one command of the distribution, assembled from its layers: the users'
CLI (`nebula_core.cli`), the operators' roles and the all-in-one (`nebula_core.allinone`),
and the developer tools (`nebula schemas`, loaded only when that command runs)."""

from __future__ import annotations

import typer

from nebula_core import cli
from nebula_core.allinone import commands, roles

app = typer.Typer(
    name="nebula",
    help="Nebula: a private IaaS cloud on NATS JetStream, Postgres and libvirt.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
commands.register(app)
roles.register(app)
cli.register(app, node_agent=roles.node_agent)


@app.command()
def schemas(
    write: bool = typer.Option(False, "--write", help="Rewrite the files instead of checking them."),
    out: str = typer.Option(None, "--out", help="The schemas/ directory (default: ./schemas)."),
) -> None:
    """Check (or with --write, regenerate) the published contract: JSON Schema, AsyncAPI, OpenAPI."""
    from nebula_core.devtools.commands import schemas as run

    run(write=write, out=out)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
