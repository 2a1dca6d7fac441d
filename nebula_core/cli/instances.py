"""`nebula instance …`: virtual machines — create, list, show (now or at a past time),
start/stop/reboot/delete (optionally waiting for the outcome), console, audit history."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Annotated

import typer

from nebula_core.cli import refs, waiting
from nebula_core.cli.client import ApiError
from nebula_core.cli.output import cell, when
from nebula_core.cli.session import Cli, command, group, parse_tags, tag_query
from nebula_core.contract import http as shapes
from nebula_core.contract.limits import USER_DATA_MAX_BYTES
from nebula_core.contract.types import InstanceState

app = group("instance", "Virtual machines: create, inspect, start, stop, reboot, delete, and their history.")

InstanceArg = Annotated[str, typer.Argument(help="Instance name or id.", show_default=False)]
ProjectOption = Annotated[str | None, typer.Option("--project", "-p", help="Project name or id.", show_default=False)]
WaitOption = Annotated[
    bool,
    typer.Option("--wait", help="Wait for the outcome, showing each state change; fail if the instance ends in error."),
]
TimeoutOption = Annotated[float, typer.Option(help="How many seconds --wait waits at most.", min=0)]
TagsOption = Annotated[
    list[str] | None, typer.Option("--tag", help="A tag key=value (repeatable).", show_default=False)
]

#: Which command-line option carries each field of the create body (named in 422 answers).
_OPTION_OF = {
    "$.project_id": "--project",
    "$.name": "--name",
    "$.description": "--description",
    "$.tags": "--tag",
    "$.region": "--region",
    "$.vcpus": "--vcpus",
    "$.ram_mb": "--ram",
    "$.disk_gb": "--disk",
    "$.image": "--image",
    "$.user_data": "--user-data",
}


async def _names(cli: Cli, instance: shapes.Instance) -> tuple[str, str]:
    """The names of the instance's project and image, for people; ids where they cannot be read."""
    try:
        project = (await cli.api.get(f"/v1/projects/{instance.project_id}", shapes.Project)).name
    except ApiError:
        project = str(instance.project_id)
    try:
        image = (await cli.api.get(f"/v1/images/{instance.image}", shapes.Image)).name
    except ApiError:
        image = str(instance.image)
    return project, image


async def print_instance(cli: Cli, instance: shapes.Instance) -> None:
    if cli.out.as_json:
        cli.out.json(instance)
        return
    project, image = await _names(cli, instance)
    cli.out.record(
        [
            ("name", instance.name),
            ("id", instance.id),
            ("state", instance.state),
            ("error", instance.error),
            ("project", f"{project} ({instance.project_id})" if project != str(instance.project_id) else project),
            ("description", instance.description),
            ("tags", instance.tags),
            ("region", instance.region),
            ("vcpus", instance.vcpus),
            ("ram_mb", instance.ram_mb),
            ("disk_gb", instance.disk_gb),
            ("image", f"{image} ({instance.image})" if image != str(instance.image) else image),
            ("node", instance.node_id),
            ("addresses", addresses_text(instance)),
            ("created", instance.created_at),
            ("updated", instance.updated_at),
            ("booted", instance.booted_at),
            ("version", instance.version),
        ]
    )


def addresses_text(instance: shapes.Instance) -> str:
    """`10.213.0.12 (nebula, 52:54:00:…)`, one per address, comma separated."""
    return ", ".join(f"{a.ipv4} ({a.network}, {a.mac})" for a in instance.addresses)


async def finish(
    cli: Cli, instance: shapes.Instance, operation: str, wait: bool, timeout: float, target: str | None = None
) -> None:
    """Print the instance — after following it to the state `operation` leads to (or to
    `target`), with `--wait`."""
    if wait:
        try:
            instance = await waiting.follow(cli, instance, target or waiting.TARGET[operation], timeout)
        except waiting.Ended as ended:
            if cli.out.as_json:
                cli.out.json(ended.instance)
            raise
    await print_instance(cli, instance)


def read_user_data(source: typer.FileText) -> str:
    """The user-data file's text: UTF-8 and within the API's limit, else a usage error (exit 2)."""
    try:
        text = source.read()
    except UnicodeDecodeError:
        raise typer.BadParameter(f"{source.name} is not UTF-8 text", param_hint="--user-data") from None
    size = len(text.encode())
    if size > USER_DATA_MAX_BYTES:
        raise typer.BadParameter(
            f"{source.name} is {size} bytes; user-data is at most {USER_DATA_MAX_BYTES} bytes", param_hint="--user-data"
        )
    return text


@command(app, "create")
async def create(
    cli: Cli,
    project: Annotated[str, typer.Option("--project", "-p", help="Project name or id.", show_default=False)],
    name: Annotated[str, typer.Option(help="The instance's name.", show_default=False)],
    vcpus: Annotated[int, typer.Option(help="Virtual CPUs.", show_default=False)],
    ram: Annotated[int, typer.Option(help="Memory in MiB.", show_default=False)],
    disk: Annotated[int, typer.Option(help="Disk in GiB.", show_default=False)],
    image: Annotated[str, typer.Option(help="Image name or id.", show_default=False)],
    region: Annotated[str | None, typer.Option(help="Region (the API's default: default).", show_default=False)] = None,
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    tag: TagsOption = None,
    user_data: Annotated[
        typer.FileText | None,
        typer.Option(
            "--user-data",
            help="File of cloud-init user-data, '-' for stdin (at most 64 KiB).",
            encoding="utf-8",
            show_default=False,
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="Send this Idempotency-Key: repeating the command with it creates one instance, not two.",
            show_default=False,
        ),
    ] = None,
    keypair: Annotated[
        list[str] | None,
        typer.Option(
            "--keypair",
            help="One of your keypairs (nebula keypair list), whose public key cloud-init installs for the "
            "image's default user (repeatable).",
            show_default=False,
        ),
    ] = None,
    wait: WaitOption = False,
    booted: Annotated[
        bool,
        typer.Option(
            "--booted",
            help="With --wait: wait on until the guest phones home (nebula-tiny does; so does a "
            "cloud-init image told to phone home), so its console has its first boot.",
        ),
    ] = False,
    timeout: TimeoutOption = waiting.DEFAULT_TIMEOUT_S,
) -> None:
    """Create an instance; it is placed and booted asynchronously (--wait follows it to running)."""
    if booted and not wait:
        raise typer.BadParameter("--booted only makes sense with --wait", param_hint="--booted")
    tags = parse_tags(tag)
    text = read_user_data(user_data) if user_data is not None else ""
    project_id = await refs.project_id(cli.api, project)
    body = shapes.InstanceCreate(
        project_id=project_id,
        name=name,
        description=description,
        tags=tags,
        vcpus=vcpus,
        ram_mb=ram,
        disk_gb=disk,
        image=image,
        user_data=text,
        keypairs=list(keypair or []),
        **({"region": region} if region is not None else {}),
    )
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    try:
        instance = await cli.api.post("/v1/instances", body, shapes.Instance, headers=headers)
    except ApiError as err:
        err.fields = [f"{f} ({_OPTION_OF[f]})" if f in _OPTION_OF else f for f in err.fields]
        raise
    await finish(cli, instance, "create", wait, timeout, waiting.BOOTED if booted else None)


@command(app, "list")
async def list_(
    cli: Cli,
    project: ProjectOption = None,
    state: Annotated[
        InstanceState | None,
        typer.Option(help="Only in this state (deleted ones are listed only when asked for).", show_default=False),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="Only with this tag: key or key=value (repeatable).", show_default=False)
    ] = None,
    region: Annotated[str | None, typer.Option(help="Only in this region.", show_default=False)] = None,
) -> None:
    """The instances you may see (every page of them)."""
    query = tag_query(tag)
    if project is not None:
        query.append(("project_id", str(await refs.project_id(cli.api, project))))
    if state is not None:
        query.append(("state", state))
    if region is not None:
        query.append(("region", region))
    found = await cli.api.all("/v1/instances", shapes.Instance, query)
    if cli.out.as_json:
        cli.out.json(found)
        return
    projects = {p.id: p.name for p in await cli.api.all("/v1/projects", shapes.Project)} if found else {}
    cli.out.table(
        ["NAME", "ID", "STATE", "PROJECT", "REGION", "VCPUS", "RAM_MB", "DISK_GB", "NODE", "IPV4", "CREATED"],
        [
            [
                i.name,
                i.id,
                f"error: {i.error}" if i.state == "error" and i.error else i.state,
                projects.get(i.project_id, i.project_id),
                i.region,
                i.vcpus,
                i.ram_mb,
                i.disk_gb,
                i.node_id,
                ",".join(a.ipv4 for a in i.addresses),
                i.created_at,
            ]
            for i in found
        ],
        empty="No instances.",
    )


@command(app, "show")
async def show(
    cli: Cli,
    instance: InstanceArg,
    project: ProjectOption = None,
    at: Annotated[
        str | None,
        typer.Option(
            help="Show it as it was at this time (RFC 3339, e.g. 2026-11-25T10:00:00Z), from its events.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """One instance, as it is now — or as it was at a past time (--at)."""
    instance_id = await _instance_id(cli, instance, project)
    found = await cli.api.get(f"/v1/instances/{instance_id}", shapes.Instance, {"at": at} if at else None)
    if at and not cli.out.as_json:
        cli.out.note(f"As it was at {at}:")
    await print_instance(cli, found)


async def _instance_id(cli: Cli, instance: str, project: str | None) -> uuid.UUID:
    scope = await refs.project_id(cli.api, project) if project is not None else None
    return await refs.instance_id(cli.api, instance, scope)


async def _act(cli: Cli, instance: str, project: str | None, action: str, wait: bool, timeout: float) -> None:
    instance_id = await _instance_id(cli, instance, project)
    if action == "delete":
        changed = await cli.api.delete(f"/v1/instances/{instance_id}", shapes.Instance)
    else:
        body = shapes.Action(action=action)  # type: ignore[arg-type]
        changed = await cli.api.post(f"/v1/instances/{instance_id}/actions", body, shapes.Instance)
    assert changed is not None
    if wait:
        await finish(cli, changed, action, wait, timeout)
    elif cli.out.as_json:
        cli.out.json(changed)
    else:
        cli.out.line(f"{waiting.label(changed)}: {changed.state}")


def _action(name: str, summary: str) -> None:
    async def act(
        cli: Cli,
        instance: InstanceArg,
        project: ProjectOption = None,
        wait: WaitOption = False,
        timeout: TimeoutOption = waiting.DEFAULT_TIMEOUT_S,
    ) -> None:
        await _act(cli, instance, project, name, wait, timeout)

    act.__name__ = name
    act.__doc__ = f"{summary} (--wait: until it is {waiting.TARGET[name]})."
    command(app, name)(act)


_action("start", "Start a stopped instance")
_action("stop", "Stop a running instance")
_action("reboot", "Reboot a running instance")
_action("delete", "Delete an instance: its domain, disks and user-data")


# Escape sequences and control characters (but newline and tab) from a guest's console
# could drive the user's terminal; they are dropped before printing.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    return _CONTROL.sub("", _ANSI.sub("", text))


@command(app, "console")
async def console(
    cli: Cli,
    instance: InstanceArg,
    project: ProjectOption = None,
    size: Annotated[int, typer.Option("--bytes", help="How much of the tail to fetch.", min=1, max=1 << 20)] = 65536,
) -> None:
    """The tail of an instance's serial console (control characters removed; --json has it verbatim)."""
    instance_id = await _instance_id(cli, instance, project)
    found = await cli.api.get(f"/v1/instances/{instance_id}/console", shapes.Console, {"bytes": str(size)})
    if cli.out.as_json:
        cli.out.json(found)
        return
    if found.truncated:
        cli.out.note(f"(the last {size} bytes of the console of {instance} on {found.node_id})")
    cli.out.line(printable(found.data).rstrip("\n"))


def ssh_argv(instance: shapes.Instance, user: str, identity: Path | None, extra: list[str]) -> list[str]:
    """`ssh [-i key] user@<its first IPv4> [extra…]`; a usage error if it has no address."""
    if not instance.addresses:
        raise typer.BadParameter(
            f"instance {instance.name} has no address (yet): it is {instance.state}"
            + ("" if instance.state != "running" else "; its guest has not leased one"),
            param_hint="INSTANCE",
        )
    if not user:
        raise typer.BadParameter("its image names no default user: give --user", param_hint="--user")
    argv = ["ssh"]
    if identity is not None:
        argv += ["-i", str(identity)]
    return [*argv, f"{user}@{instance.addresses[0].ipv4}", *extra]


@command(app, "ssh")
async def ssh(
    cli: Cli,
    instance: InstanceArg,
    project: ProjectOption = None,
    user: Annotated[
        str | None, typer.Option("--user", "-l", help="Log in as (default: the image's default user).")
    ] = None,
    identity: Annotated[
        Path | None, typer.Option("--identity", "-i", help="Private key (e.g. ~/.ssh/nebula-<keypair>).")
    ] = None,
    command_: Annotated[
        list[str] | None, typer.Argument(metavar="[-- COMMAND…]", help="A command to run there.", show_default=False)
    ] = None,
) -> None:
    """ssh to an instance's address as its image's default user (ssh must be installed here)."""
    instance_id = await _instance_id(cli, instance, project)
    found = await cli.api.get(f"/v1/instances/{instance_id}", shapes.Instance)
    login = user if user is not None else (await cli.api.get(f"/v1/images/{found.image}", shapes.Image)).default_user
    argv = ssh_argv(found, login, identity, list(command_ or []))
    if shutil.which("ssh") is None:
        raise typer.BadParameter("ssh is not installed here (Debian: apt-get install openssh-client)")
    os.execvp("ssh", argv)


@command(app, "events")
async def events(cli: Cli, instance: InstanceArg, project: ProjectOption = None) -> None:
    """An instance's whole history, from the event log (its audit trail)."""
    instance_id = await _instance_id(cli, instance, project)
    history = await cli.api.all(f"/v1/instances/{instance_id}/events", shapes.EventRecord)
    if cli.out.as_json:
        cli.out.json(history)
        return
    cli.out.table(
        ["SEQ", "AT", "TYPE", "ACTOR", "DETAILS"],
        [[e.seq, when(e.at, precise=True), e.type, e.actor, cell(e.data)] for e in history],
        empty="No events.",
    )


def register(root: typer.Typer) -> None:
    root.add_typer(app, rich_help_panel="Using the cloud")
