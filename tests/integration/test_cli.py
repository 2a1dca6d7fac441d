"""The `nebula` command line, run as the console script it is, against a running API with
real NATS, real Postgres and a projector. Each command is a subprocess with its own
environment (never the developer's config), so exit statuses, stdout and stderr are what a
person or a script would see. No orchestrator runs here: where an instance must move, the
test records what the orchestrator would, straight on the event store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nebula_core.contract.types import Overcommit, Resources
from nebula_core.domain import AGGREGATES, Instance, Node
from nebula_core.domain.codec import Codec
from nebula_core.eventstore import EventStore
from tests.integration.conftest import ADMIN_TOKEN, Cloud
from tests.support import eventually

_SCRIPT = Path(sys.executable).with_name("nebula")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "nebula_core"]


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def error(self) -> str:
        """The last line on stderr: where the CLI says why it failed."""
        return self.err.strip().splitlines()[-1] if self.err.strip() else ""


@dataclass
class Nebula:
    """`nebula …` pointed at the test cloud; `env` entries set to None are removed."""

    env: dict[str, str]

    def _env(self, token: str | None, extra: dict[str, str | None]) -> dict[str, str]:
        env = {**self.env, **({"NEBULA_TOKEN": token} if token else {})}
        for key, value in extra.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    async def start(
        self, *args: str, token: str | None = ADMIN_TOKEN, env: dict[str, str | None] | None = None
    ) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *COMMAND,
            *args,
            env=self._env(token, env or {}),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def __call__(
        self, *args: str, token: str | None = ADMIN_TOKEN, env: dict[str, str | None] | None = None, timeout: float = 60
    ) -> Ran:
        return await finished(await self.start(*args, token=token, env=env), timeout)


async def finished(process: asyncio.subprocess.Process, timeout: float = 60) -> Ran:
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert "Traceback" not in err.decode(), err.decode()
    return Ran(process.returncode if process.returncode is not None else -1, out.decode(), err.decode())


@pytest.fixture
def nebula(cloud: Cloud, tmp_path: Path) -> Nebula:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEBULA_")}
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        NEBULA_STATE_DIR=str(tmp_path / "state"),
        NEBULA_CONFIG=str(tmp_path / "absent.toml"),
        NEBULA_URL=cloud.base,
    )
    return Nebula(env)


async def change(cloud: Cloud, instance_id: str, *steps: Callable[[Instance], object]) -> None:
    """Record what the orchestrator would, straight on the event store."""
    store = EventStore(cloud.js, Codec(*AGGREGATES))
    instance = await store.load(Instance, uuid.UUID(instance_id))
    for step in steps:
        step(instance)
    await store.save(instance, actor="system:test")


CREATE = (
    "instance",
    "create",
    "--project",
    "alpha",
    "--name",
    "web-1",
    "--vcpus",
    "1",
    "--ram",
    "256",
    "--disk",
    "1",
    "--image",
    "nebula-tiny",
    "--region",
    "eu",
)


async def alpha_with_alice(cloud: Cloud) -> tuple[str, str]:
    """Project alpha with alice as a member, and the nebula-tiny image: (project id, alice's token)."""
    user_id, alice = await cloud.user("alice")
    project_id = await cloud.project("alpha")
    await cloud.member(project_id, user_id, "member")
    await cloud.image("nebula-tiny")
    return project_id, alice.token


async def the_instance(cloud: Cloud, name: str = "web-1") -> str:
    async def probe() -> str | None:
        _, page = await cloud.admin.get("/v1/instances")
        return next((i["id"] for i in page["items"] if i["name"] == name), None)

    return await eventually(probe)


async def test_an_admin_sets_up_projects_users_and_images(nebula: Nebula, image_roots: str) -> None:
    created = await nebula("project", "create", "demo", "--tag", "team=infra", "--max-instances", "5")
    assert created.code == 0, created.err
    assert "demo" in created.out and "0 of 5" in created.out

    alice = (await nebula("user", "create", "alice", "--json")).json()
    assert alice["name"] == "alice" and alice["token"].startswith("nbl_")
    added = await nebula("project", "add-member", "demo", "alice", "--role", "member")
    assert added.code == 0 and "alice is now member of project demo" in added.out

    projects = (await nebula("project", "list", "--json")).json()
    assert [(p["name"], p["quotas"]["instances"], p["tags"]) for p in projects] == [("demo", 5, {"team": "infra"})]
    table = await nebula("project", "list")
    assert table.out.splitlines()[0].split()[:3] == ["NAME", "ID", "INSTANCES"]
    assert "demo" in table.out and "0/5" in table.out
    members = (await nebula("project", "members", "demo", "--json")).json()
    assert members == [{"user_id": alice["id"], "role": "member"}]
    as_alice = (await nebula("project", "show", "demo", "--json", token=alice["token"])).json()
    assert as_alice["name"] == "demo"

    kernel = Path(image_roots) / "nebula-tiny" / "manifest.json"
    kernel.parent.mkdir(parents=True)
    kernel.write_text('{"kernel": "vmlinuz"}')
    image = (
        await nebula("image", "create", "nebula-tiny", "--format", "direct-kernel", "--source", str(kernel), "--json")
    ).json()
    assert image["sha256"] == hashlib.sha256(kernel.read_bytes()).hexdigest()
    assert image["size"] == kernel.stat().st_size
    listed = await nebula("image", "list")
    assert "nebula-tiny" in listed.out and "direct-kernel" in listed.out

    deleted = await nebula("project", "delete", "demo")
    assert deleted.code == 0 and "Deleted project demo" in deleted.err
    assert (await nebula("project", "list", "--json")).json() == []


async def test_a_project_is_updated_in_place(nebula: Nebula) -> None:
    await nebula("project", "create", "web", "--tag", "team=a", "--max-vcpus", "8")
    alice = (await nebula("user", "create", "alice", "--json")).json()
    await nebula("project", "add-member", "web", "alice", "--role", "admin")

    changed = await nebula(
        "project",
        "update",
        "web",
        "--description",
        "the shop",
        "--tag",
        "team=b",
        "--tag",
        "tier=1",
        "--max-ram",
        "4096",
        "--json",
    )
    renamed = await nebula("project", "update", "web", "--name", "shop", "--clear-tags", token=alice["token"])
    refused = await nebula("project", "update", "shop", "--max-vcpus", "100", token=alice["token"])
    both = await nebula("project", "update", "shop", "--tag", "a=b", "--clear-tags")

    assert changed.code == 0, changed.err
    project = changed.json()
    assert (project["description"], project["tags"]) == ("the shop", {"team": "b", "tier": "1"})
    assert (project["quotas"]["ram_mb"], project["quotas"]["vcpus"]) == (4096, 8)  # the others kept
    assert renamed.code == 0 and "shop" in renamed.out, renamed.err
    shown = (await nebula("project", "show", "shop", "--json")).json()
    assert (shown["name"], shown["tags"], shown["description"]) == ("shop", {}, "the shop")
    assert refused.code == 1 and len(refused.err.strip().splitlines()) == 1
    assert "only a cloud administrator may change a project's quotas" in refused.err
    assert both.code == 2 and "--clear-tags" in both.err


async def test_a_member_creates_inspects_and_drives_an_instance(nebula: Nebula, cloud: Cloud, tmp_path: Path) -> None:
    _, alice = await alpha_with_alice(cloud)
    user_data = tmp_path / "user-data"
    user_data.write_text("#!/bin/sh\necho hello\n")

    created = await nebula(*CREATE, "--tag", "tier=web", "--user-data", str(user_data), "--json", token=alice)
    assert created.code == 0, created.err
    instance = created.json()
    assert (instance["state"], instance["tags"], instance["region"]) == ("pending", {"tier": "web"}, "eu")

    listed = await nebula("instance", "list", token=alice)
    row = next(line for line in listed.out.splitlines() if line.startswith("web-1"))
    assert "pending" in row and "alpha" in row and instance["id"] in row
    shown = await nebula("instance", "show", "web-1", token=alice)
    assert "nebula-tiny" in shown.out and "pending" in shown.out

    await change(cloud, instance["id"], lambda i: i.schedule("node-a"), lambda i: i.launch())
    stopped = await nebula("instance", "stop", "web-1", token=alice)
    assert stopped.code == 0 and stopped.out.strip().endswith("stopping")

    console = await nebula("instance", "console", "web-1", token=alice)
    assert console.code == 1 and console.out == ""
    assert console.err.count("\n") == 1 and "node node-a" in console.error

    history = (await nebula("instance", "events", "web-1", "--json", token=alice)).json()
    assert [e["type"] for e in history] == [
        "instance.created",
        "instance.scheduled",
        "instance.launched",
        "instance.stop_requested",
    ]
    then = await nebula("instance", "show", "web-1", "--at", history[0]["at"], "--json", token=alice)
    assert then.json()["state"] == "pending"
    audit = await nebula("instance", "events", instance["id"], token=alice)
    assert "instance.stop_requested" in audit.out

    deleting = (await nebula("instance", "delete", "web-1", "--json", token=alice)).json()
    assert deleting["state"] == "deleting"


async def test_wait_follows_an_instance_to_running(nebula: Nebula, cloud: Cloud) -> None:
    _, alice = await alpha_with_alice(cloud)
    waiting = await nebula.start(*CREATE, "--wait", "--timeout", "30", token=alice)
    instance_id = await the_instance(cloud)
    await change(cloud, instance_id, lambda i: i.schedule("node-a"))
    await change(cloud, instance_id, lambda i: i.launch())
    ran = await finished(waiting)
    assert ran.code == 0, ran.err
    assert "pending (" in ran.err and "-> running" in ran.err
    assert "running" in ran.out


async def test_wait_exits_1_with_the_reason_when_the_instance_fails(nebula: Nebula, cloud: Cloud) -> None:
    _, alice = await alpha_with_alice(cloud)
    waiting = await nebula.start(*CREATE, "--wait", "--timeout", "30", "--json", token=alice)
    instance_id = await the_instance(cloud)
    await change(cloud, instance_id, lambda i: i.fail("no node in region eu has 1 free vCPU"))
    ran = await finished(waiting)
    assert ran.code == 1
    assert ran.error == (
        f"nebula: error: instance web-1 ({instance_id}) ended in error: no node in region eu has 1 free vCPU"
    )
    assert ran.json()["state"] == "error"  # --json still hands the script the instance


async def test_wait_times_out_with_a_clear_message(nebula: Nebula, cloud: Cloud) -> None:
    _, alice = await alpha_with_alice(cloud)
    ran = await nebula(*CREATE, "--wait", "--timeout", "1", token=alice)
    assert ran.code == 1
    assert ran.error.startswith("nebula: error: timed out after 1s waiting for instance web-1")
    assert ran.error.endswith("to be running; it is pending")


async def test_api_refusals_are_one_line_on_stderr_and_exit_1(nebula: Nebula, cloud: Cloud) -> None:
    project_id, alice = await alpha_with_alice(cloud)

    unknown = await nebula("project", "show", "nope")
    assert (unknown.code, unknown.out, unknown.err) == (1, "", "nebula: error: no project named 'nope'\n")

    no_cpus = list(CREATE)
    no_cpus[CREATE.index("--vcpus") + 1] = "0"
    invalid = await nebula(*no_cpus, token=alice)
    assert invalid.code == 1 and invalid.err.count("\n") == 1
    assert "HTTP 422" in invalid.error and "$.vcpus (--vcpus)" in invalid.error

    forbidden = await nebula("project", "create", "mine", token=alice)
    assert forbidden.code == 1 and "only a cloud administrator" in forbidden.error

    await nebula(*CREATE, token=alice)
    busy = await nebula("project", "delete", project_id)
    assert busy.code == 1 and "HTTP 409" in busy.error and "delete them first" in busy.error

    hidden = await nebula("instance", "show", str(uuid.uuid4()), token=alice)
    assert hidden.code == 1 and "HTTP 404" in hidden.error

    wrong_token = await nebula("project", "list", token="nbl_not-a-token")
    assert wrong_token.code == 1 and "invalid token" in wrong_token.error
    assert wrong_token.error.endswith("the token came from NEBULA_TOKEN")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_no_token_bad_config_and_no_api_exit_2(nebula: Nebula, cloud: Cloud, tmp_path: Path) -> None:
    no_token = await nebula("project", "list", token=None)
    assert no_token.code == 2 and no_token.error.startswith("nebula: error: no API token: pass --token")

    port = _closed_port()
    unreachable = await nebula("project", "list", env={"NEBULA_URL": f"http://127.0.0.1:{port}"})
    assert unreachable.code == 2
    assert unreachable.error.startswith(f"nebula: error: cannot reach the API at http://127.0.0.1:{port}")

    not_http = await nebula("project", "list", env={"NEBULA_URL": "ftp://example.org"})
    assert not_http.code == 2 and "must start with http://" in not_http.error

    usage = await nebula("instance", "create", "--name", "web-1")
    assert usage.code == 2 and "Traceback" not in usage.err
    bad_tag = await nebula("project", "create", "x", "--tag", "novalue")
    assert bad_tag.code == 2 and "key=value" in bad_tag.err

    config = tmp_path / "config" / "nebula" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("url = [broken")
    broken = await nebula("project", "list", token=None, env={"NEBULA_URL": None})
    assert broken.code == 2 and f"cannot read {config}" in broken.error

    config.write_text(f'url = "{cloud.base}/v1"\ntoken = "{ADMIN_TOKEN}"\n')
    from_file = await nebula("project", "list", "--json", token=None, env={"NEBULA_URL": None})
    assert from_file.code == 0 and from_file.json() == []


async def test_node_list_shows_allocation_and_liveness(nebula: Nebula, cloud: Cloud) -> None:
    _, alice = await alpha_with_alice(cloud)
    empty = await nebula("node", "list")
    assert (empty.code, empty.out, empty.err.strip()) == (0, "", "No nodes.")

    node = Node(
        name="node-a",
        region="eu",
        capacity=Resources(vcpus=8, ram_mb=16384, disk_gb=200),
        overcommit=Overcommit(cpu=4.0, ram=1.0, disk=1.0),
        agent_version="0.1.0",
    )
    await EventStore(cloud.js, Codec(*AGGREGATES)).save(node, actor="system:test")

    async def listed() -> Ran | None:
        ran = await nebula("node", "list")
        return ran if "node-a" in ran.out else None

    row = next(line for line in (await eventually(listed)).out.splitlines() if line.startswith("node-a"))
    assert row.split()[:4] == ["node-a", "eu", "silent", "0/8"] and "(x4)" in row and "0/16384" in row
    nodes = (await nebula("node", "list", "--json")).json()
    assert [(n["id"], n["alive"]) for n in nodes] == [("node-a", False)]
    refused = await nebula("node", "list", token=alice)
    assert refused.code == 1 and "HTTP 403" in refused.error


async def test_events_tail_replays_from_a_sequence_then_follows_live(nebula: Nebula, cloud: Cloud) -> None:
    _, alice = await alpha_with_alice(cloud)
    replayed = await nebula("events", "tail", "--since", "0", "--count", "3", "--json")
    assert replayed.code == 0, replayed.err
    records = [json.loads(line) for line in replayed.out.splitlines()]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert [r["type"] for r in records] == ["user.created", "project.created", "project.member_set"]

    live = await nebula.start("events", "tail", "--since", "0", "--type", "instance", "--count", "1")
    await nebula(*CREATE, token=alice)
    followed = await finished(live, timeout=30)
    assert followed.code == 0, followed.err
    assert "instance.created" in followed.out and "user:" in followed.out
