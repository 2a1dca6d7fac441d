"""A control plane for API tests: the real aiohttp app on a loopback port, a projector,
real NATS and a migrated Postgres. `cloud.admin` and users' clients speak plain HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from aiohttp.test_utils import TestServer
from nats.js import JetStreamContext

from nebula_core import config, nats_client
from nebula_core.allinone.embedded import NatsServer
from nebula_core.api.app import make_app
from nebula_core.projections.projector import Projector

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


@dataclass
class Client:
    session: aiohttp.ClientSession
    base: str
    token: str

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(extra or {})}

    async def call(
        self, method: str, path: str, json: Any = None, headers: dict[str, str] | None = None, data: bytes | None = None
    ) -> tuple[int, Any]:
        async with self.session.request(
            method, self.base + path, json=json, data=data, headers=self._headers(headers)
        ) as response:
            text = await response.text()
            try:
                payload = await response.json(content_type=None) if text else None
            except ValueError:
                payload = text
            return response.status, payload

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> tuple[int, Any]:
        return await self.call("POST", path, json=json, **kw)


@dataclass
class Cloud:
    base: str
    session: aiohttp.ClientSession
    js: JetStreamContext
    pool: asyncpg.Pool
    #: The API's settings (its own NATS identity); `settings_for` gives another role's.
    settings: config.Settings
    nats: NatsServer
    admin: Client = field(init=False)

    def __post_init__(self) -> None:
        self.admin = Client(self.session, self.base, ADMIN_TOKEN)

    def settings_for(self, role: str) -> config.Settings:
        """The cloud's settings as `role` (a control-plane role, `sim`, or a node's user) runs them."""
        return msgspec.structs.replace(self.settings, nats_url=self.nats.url_for(role))

    def client(self, token: str) -> Client:
        return Client(self.session, self.base, token)

    async def user(self, name: str) -> tuple[str, Client]:
        status, body = await self.admin.post("/v1/users", {"name": name})
        assert status == 201, body
        return body["id"], self.client(body["token"])

    async def project(self, name: str = "alpha", **extra: Any) -> str:
        status, body = await self.admin.post("/v1/projects", {"name": name, **extra})
        assert status == 201, body
        return str(body["id"])

    async def member(self, project_id: str, user_id: str, role: str) -> None:
        status, body = await self.admin.post(f"/v1/projects/{project_id}/members", {"user_id": user_id, "role": role})
        assert status == 201, body

    async def image(self, name: str = "tiny") -> str:
        """Register a direct-kernel image (whose files need not exist) under the image root."""
        status, body = await self.admin.post(
            "/v1/images",
            {
                "name": name,
                "format": "direct-kernel",
                "source": f"{self.settings.image_sources.roots[0]}/tiny/manifest.json",
                "sha256": "a" * 64,
                "size": 1234,
            },
        )
        assert status == 201, body
        return str(body["id"])


@pytest.fixture
def image_roots(tmp_path: Path) -> str:
    """`NEBULA_IMAGE_ROOTS` of the cloud under test: where local image sources may lie."""
    return str(tmp_path / "images")


@pytest.fixture
async def cloud(
    nats_server: NatsServer, js: JetStreamContext, pool: asyncpg.Pool, pg_dsn: str, image_roots: str
) -> AsyncIterator[Cloud]:
    """The API and a projector, each with its own NATS identity; `js` is the operator's."""
    settings = config.load(
        {}, nats_url=nats_server.url_for("api"), pg_dsn=pg_dsn, admin_token=ADMIN_TOKEN, image_roots=image_roots
    )
    stop = asyncio.Event()
    projector_nc = await nats_client.connect(nats_server.url_for("projector"), name="projector")
    projector = asyncio.create_task(Projector(projector_nc.jetstream(), pool).run(stop))
    server = TestServer(make_app(settings), host="127.0.0.1")
    await server.start_server()
    async with aiohttp.ClientSession() as session:
        yield Cloud(str(server.make_url("")).rstrip("/"), session, js, pool, settings, nats_server)
    await server.close()
    stop.set()
    await projector
    await projector_nc.close()
