"""`nebula up` keeps its cloud alive: a role that dies and the embedded Postgres that dies
are both reported and restarted, and the API answers again."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import aiohttp
import psutil

from nebula_core.allinone.embedded import free_port
from tests.integration.test_init_and_up import NEBULA
from tests.support import eventually


class Up:
    """`nebula up` as a process, its output collected line by line."""

    def __init__(self, state: Path) -> None:
        self.api = f"127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "NEBULA_STATE_DIR": str(state),
            "NEBULA_NATS_URL": f"nats://127.0.0.1:{free_port()}",
            "NEBULA_API_LISTEN": self.api,
            "NEBULA_META_LISTEN": f"127.0.0.1:{free_port()}",
        }
        env.pop("NEBULA_PG_DSN", None)
        self.proc = subprocess.Popen(
            [*NEBULA, "up", "--libvirt-uri", "test:///default"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def child(self, role: str) -> psutil.Process:
        return next(
            p
            for p in psutil.Process(self.proc.pid).children(recursive=True)
            if p.cmdline()[-1:] == [role] and "nebula_core" in p.cmdline()
        )

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


async def test_a_dead_role_and_a_dead_postgres_are_restarted(tmp_path: Path) -> None:
    up = Up(tmp_path / "state")
    try:
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                try:
                    async with http.get(f"http://{up.api}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(healthy, timeout=90, interval=0.5)
            api = up.child("api")
            api.kill()
            postmaster = int((tmp_path / "state" / "postgres" / "postmaster.pid").read_text().split()[0])
            os.kill(postmaster, signal.SIGKILL)

            await eventually(lambda: _true(up.said("api exited with -9; restarting")), timeout=30)
            await eventually(lambda: _true(up.said("postgres restarted")), timeout=60)
            await eventually(healthy, timeout=60, interval=0.5)
            assert up.child("api").pid != api.pid
            assert up.said("postgres is not answering")
    finally:
        code = up.stop()
    assert code == 0, "\n".join(up.lines[-20:])


async def _true(value: bool) -> bool:
    return value
