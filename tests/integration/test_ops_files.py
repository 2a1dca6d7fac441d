"""The operations files an operator copies: the NATS configurations must be valid for the
nats-server Nebula ships with the users `nebula nats-auth config` writes, take no
anonymous client, and - for the cluster - accept a route only with the route password."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors
import pytest

from nebula_core.allinone.embedded import free_port, nats_server_binary, wait_for_port
from nebula_core.allinone.nats_auth import NatsCredentials
from nebula_core.contract import subjects
from nebula_core.contract.permissions import node_user
from nebula_core.nats_client import identity_options
from tests.support import eventually

OPS = Path(__file__).resolve().parents[2] / "ops"
NODE = "compute-1"


def nebula(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("nebula")), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "NEBULA_STATE_DIR": str(cwd / "state")},
    )


def installed(config: Path, where: Path, routes: list[str] | None = None, **replace: str) -> Path:
    """`config` copied into `where` (as /etc/nebula/nats.conf), with `replace`'s changes
    and the users `nebula nats-auth config` writes beside it."""
    where.mkdir(parents=True, exist_ok=True)
    text = config.read_text()
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    (where / "nats.conf").write_text(text)
    written = nebula("nats-auth", "config", "--out", str(where / "nebula-users.conf"), "--node", NODE, cwd=where.parent)
    assert written.returncode == 0, written.stderr
    if "include nebula-routes.conf" in text:
        peers = routes or ["nats-1:6222", "nats-2:6222", "nats-3:6222"]
        written = nebula("nats-auth", "routes", *peers, "--out", str(where / "nebula-routes.conf"), cwd=where.parent)
        assert written.returncode == 0, written.stderr
    return where / "nats.conf"


@pytest.mark.parametrize("config", sorted((OPS / "nats").glob("*.conf")), ids=lambda p: p.name)
def test_the_nats_configuration_is_valid_with_the_generated_users(config: Path, tmp_path: Path) -> None:
    path = installed(config, tmp_path / "etc")
    checked = subprocess.run([nats_server_binary(), "-t", "-c", str(path)], capture_output=True, text=True, timeout=30)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "is valid" in checked.stdout + checked.stderr
    assert (tmp_path / "etc" / "nebula-users.conf").stat().st_mode & 0o777 == 0o600
    assert "include nebula-users.conf" in config.read_text()


def test_there_is_a_single_server_and_a_cluster_configuration() -> None:
    assert {p.name for p in (OPS / "nats").glob("*.conf")} == {"single.conf", "cluster-node.conf"}


def test_nats_auth_refuses_what_is_no_node_id_and_a_user_without_a_password(tmp_path: Path) -> None:
    bad = nebula("nats-auth", "config", "--out", str(tmp_path / "u.conf"), "--node", "a.b", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith("nebula: ") and len(bad.stderr.splitlines()) == 1
    missing = nebula("nats-auth", "url", "node-nowhere", "--servers", "nats://h:4222", cwd=tmp_path)
    assert missing.returncode == 1 and "nebula nats-auth config" in missing.stderr


class Servers:
    """nats-server processes started from an installed configuration, stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, config: Path, port: int, env: dict[str, str] | None = None) -> None:
        proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)],
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        wait_for_port("127.0.0.1", port, timeout=20, proc=proc)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def servers() -> Iterator[Servers]:
    started = Servers()
    yield started
    started.stop()


def local(
    config: Path, where: Path, client: int, monitor: int, extra: dict[str, str], routes: list[str] | None = None
) -> Path:
    return installed(
        config,
        where,
        routes,
        **{
            "listen: 0.0.0.0:4222": f"listen: 127.0.0.1:{client}",
            "http: 127.0.0.1:8222": f"http: 127.0.0.1:{monitor}",
            "store_dir: /var/lib/nats": f"store_dir: {where / 'store'}",
            **extra,
        },
    )


async def test_the_single_server_takes_no_anonymous_client_and_each_host_its_own_user(
    servers: Servers, tmp_path: Path
) -> None:
    client, monitor = free_port(), free_port()
    where = tmp_path / "etc"
    config = local(OPS / "nats" / "single.conf", where, client, monitor, {})
    servers.start(config, client)
    address = f"nats://127.0.0.1:{client}"

    with pytest.raises((nats.errors.NoServersError, nats.errors.Error, OSError)):
        await nats.connect(address, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    printed = nebula("nats-auth", "url", node_user(NODE), "--servers", address, cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    url = printed.stdout.strip()
    assert url == NatsCredentials(tmp_path / "state" / "nats" / "credentials").url(address, node_user(NODE))
    nc = await nats.connect(url, allow_reconnect=False, **identity_options(url))
    try:
        await nc.publish(subjects.report_subject(NODE), b"{}")
        await nc.flush()
    finally:
        await nc.close()


def routes_of(monitor: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/routez", timeout=5) as answer:
        return int(json.load(answer)["num_routes"])


async def test_the_cluster_forms_over_authenticated_routes_and_refuses_a_route_without_the_password(
    servers: Servers, tmp_path: Path
) -> None:
    names = ("nats-1", "nats-2", "nats-3")
    clients = {n: free_port() for n in names}
    monitors = {n: free_port() for n in names}
    routes = {n: free_port() for n in names}
    peers = [f"127.0.0.1:{routes[n]}" for n in names]
    for name in names:
        extra = {
            "server_name: nats-1": f"server_name: {name}",
            "listen: 0.0.0.0:6222": f"listen: 127.0.0.1:{routes[name]}",
        }
        # The same credentials directory (tmp_path/state) for the three: one route password.
        config = local(OPS / "nats" / "cluster-node.conf", tmp_path / name, clients[name], monitors[name], extra, peers)
        servers.start(config, clients[name])

    async def formed() -> bool:
        return all(n >= 2 for n in [await asyncio.to_thread(routes_of, monitors[n]) for n in names])

    await eventually(formed, timeout=30, interval=0.5)

    # A fourth server that knows the routes but not their password is refused by each.
    client, monitor = free_port(), free_port()
    intruder = {
        "server_name: nats-1": "server_name: intruder",
        "listen: 0.0.0.0:6222": f"listen: 127.0.0.1:{free_port()}",
    }
    where = tmp_path / "elsewhere" / "etc"
    config = local(OPS / "nats" / "cluster-node.conf", where, client, monitor, intruder, peers)
    servers.start(config, client)
    await asyncio.sleep(3)  # its route attempts have been answered by then
    assert await asyncio.to_thread(routes_of, monitor) == 0
    assert "nebula-route" in (where / "nebula-routes.conf").read_text()
    assert all(n >= 2 for n in [await asyncio.to_thread(routes_of, monitors[n]) for n in names])
