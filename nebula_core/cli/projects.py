"""`nebula project …`: projects, their quotas and their members."""

from __future__ import annotations

from typing import Annotated

import msgspec
import typer

from nebula_core.cli import refs
from nebula_core.cli.session import Cli, command, group, parse_tags, tag_query
from nebula_core.contract import http as shapes
from nebula_core.contract.types import Quotas, Role

app = group("project", "Projects: the people in them, what they may hold, and what they hold now.")

ProjectArg = Annotated[str, typer.Argument(help="Project name or id.", show_default=False)]
UserArg = Annotated[str, typer.Argument(help="User name or id (names need a cloud admin's token).", show_default=False)]
_QUOTAS = "Quotas (each defaults to the API's default)"
Quota = Annotated[int | None, typer.Option(rich_help_panel=_QUOTAS, show_default=False)]


def _usage(used: int, limit: int) -> str:
    return f"{used}/{limit}"


def project_rows(projects: list[shapes.Project]) -> list[list[object]]:
    return [
        [
            p.name,
            p.id,
            _usage(p.usage.instances, p.quotas.instances),
            _usage(p.usage.vcpus, p.quotas.vcpus),
            _usage(p.usage.ram_mb, p.quotas.ram_mb),
            _usage(p.usage.disk_gb, p.quotas.disk_gb),
            p.tags,
            p.created_at,
        ]
        for p in projects
    ]


def print_project(cli: Cli, project: shapes.Project) -> None:
    if cli.out.as_json:
        cli.out.json(project)
        return
    used, limit = project.usage, project.quotas
    cli.out.record(
        [
            ("name", project.name),
            ("id", project.id),
            ("description", project.description),
            ("tags", project.tags),
            ("instances", f"{used.instances} of {limit.instances}"),
            ("vcpus", f"{used.vcpus} of {limit.vcpus}"),
            ("ram_mb", f"{used.ram_mb} of {limit.ram_mb}"),
            ("disk_gb", f"{used.disk_gb} of {limit.disk_gb}"),
            ("created", project.created_at),
            ("updated", project.updated_at),
            ("version", project.version),
        ]
    )


@command(app, "create")
async def create(
    cli: Cli,
    name: Annotated[str, typer.Argument(help="The project's name.", show_default=False)],
    description: Annotated[str, typer.Option(help="What the project is for.")] = "",
    tag: Annotated[list[str] | None, typer.Option(help="A tag key=value (repeatable).", show_default=False)] = None,
    max_instances: Quota = None,
    max_vcpus: Quota = None,
    max_ram: Annotated[int | None, typer.Option(help="In MiB.", rich_help_panel=_QUOTAS, show_default=False)] = None,
    max_disk: Annotated[int | None, typer.Option(help="In GiB.", rich_help_panel=_QUOTAS, show_default=False)] = None,
) -> None:
    """Create a project (cloud admins)."""
    limits = {"instances": max_instances, "vcpus": max_vcpus, "ram_mb": max_ram, "disk_gb": max_disk}
    body = shapes.ProjectCreate(
        name=name,
        description=description,
        tags=parse_tags(tag),
        quotas=Quotas(**{k: v for k, v in limits.items() if v is not None}),
    )
    print_project(cli, await cli.api.post("/v1/projects", body, shapes.Project))


@command(app, "list")
async def list_(
    cli: Cli,
    tag: Annotated[
        list[str] | None,
        typer.Option(help="Only those with this tag: key or key=value (repeatable).", show_default=False),
    ] = None,
) -> None:
    """The projects you are a member of (all of them, for cloud admins), with usage/quota."""
    projects = await cli.api.all("/v1/projects", shapes.Project, tag_query(tag))
    if cli.out.as_json:
        cli.out.json(projects)
        return
    cli.out.table(
        ["NAME", "ID", "INSTANCES", "VCPUS", "RAM_MB", "DISK_GB", "TAGS", "CREATED"],
        project_rows(projects),
        empty="No projects.",
    )


@command(app, "show")
async def show(cli: Cli, project: ProjectArg) -> None:
    """One project: description, tags, and what it uses of each quota."""
    project_id = await refs.project_id(cli.api, project)
    print_project(cli, await cli.api.get(f"/v1/projects/{project_id}", shapes.Project))


@command(app, "update")
async def update(
    cli: Cli,
    project: ProjectArg,
    name: Annotated[str | None, typer.Option(help="A new name.", show_default=False)] = None,
    description: Annotated[str | None, typer.Option(help="A new description.", show_default=False)] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="The tags, all of them: key=value (repeatable).", show_default=False)
    ] = None,
    clear_tags: Annotated[bool, typer.Option("--clear-tags", help="Remove every tag.")] = False,
    max_instances: Quota = None,
    max_vcpus: Quota = None,
    max_ram: Annotated[int | None, typer.Option(help="In MiB.", rich_help_panel=_QUOTAS, show_default=False)] = None,
    max_disk: Annotated[int | None, typer.Option(help="In GiB.", rich_help_panel=_QUOTAS, show_default=False)] = None,
) -> None:
    """Change a project's name, description, tags or quotas (project admins; quotas: cloud admins).
    Only what is given changes; a change made meanwhile by someone else is refused (409)."""
    if tag and clear_tags:
        raise typer.BadParameter("give --tag or --clear-tags, not both", param_hint="--clear-tags")
    project_id = await refs.project_id(cli.api, project)
    current = await cli.api.get(f"/v1/projects/{project_id}", shapes.Project)
    limits = {"instances": max_instances, "vcpus": max_vcpus, "ram_mb": max_ram, "disk_gb": max_disk}
    wanted = {k: v for k, v in limits.items() if v is not None}
    body = shapes.ProjectPatch(
        name=name,
        description=description,
        tags={} if clear_tags else (parse_tags(tag) if tag else None),
        quotas=msgspec.structs.replace(current.quotas, **wanted) if wanted else None,
    )
    print_project(
        cli,
        await cli.api.patch(
            f"/v1/projects/{project_id}", body, shapes.Project, headers={"If-Match": f'"{current.version}"'}
        ),
    )


@command(app, "delete")
async def delete(cli: Cli, project: ProjectArg) -> None:
    """Delete a project; it must hold no instances."""
    project_id = await refs.project_id(cli.api, project)
    await cli.api.delete(f"/v1/projects/{project_id}")
    cli.out.note(f"Deleted project {project} ({project_id}).")


@command(app, "add-member")
async def add_member(
    cli: Cli,
    project: ProjectArg,
    user: UserArg,
    role: Annotated[Role, typer.Option(help="The role in the project.")] = "member",
) -> None:
    """Give a user a role in a project (or change the role they have)."""
    project_id = await refs.project_id(cli.api, project)
    user_id = await refs.user_id(cli.api, user)
    body = shapes.MemberAdd(user_id=user_id, role=role)
    member = await cli.api.post(f"/v1/projects/{project_id}/members", body, shapes.Member)
    if cli.out.as_json:
        cli.out.json(member)
    else:
        cli.out.line(f"{user} is now {member.role} of project {project}.")


@command(app, "remove-member")
async def remove_member(cli: Cli, project: ProjectArg, user: UserArg) -> None:
    """Take a user out of a project."""
    project_id = await refs.project_id(cli.api, project)
    user_id = await refs.user_id(cli.api, user)
    await cli.api.delete(f"/v1/projects/{project_id}/members/{user_id}")
    cli.out.note(f"{user} is no longer a member of project {project}.")


@command(app, "members")
async def members(cli: Cli, project: ProjectArg) -> None:
    """Who is in a project, with which role."""
    project_id = await refs.project_id(cli.api, project)
    found = await cli.api.all(f"/v1/projects/{project_id}/members", shapes.Member)
    if cli.out.as_json:
        cli.out.json(found)
        return
    cli.out.table(["USER_ID", "ROLE"], [[m.user_id, m.role] for m in found], empty="No members.")


def register(root: typer.Typer) -> None:
    root.add_typer(app, rich_help_panel="Using the cloud")
