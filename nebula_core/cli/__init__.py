"""`nebula`: the one command of the distribution — operators' subcommands and users' CLI."""

from __future__ import annotations

import typer

from nebula_core.cli import admin, events, images, instances, nodes, projects, roles, users

app = typer.Typer(
    name="nebula",
    help="Nebula: a private IaaS cloud on NATS JetStream, Postgres and libvirt.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
admin.register(app)
roles.register(app)
for using_the_cloud in (projects, users, images, instances, nodes, events):
    using_the_cloud.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
