"""`nebula meta`: cloud-init NoCloud over HTTP, under `/nocloud/<instance id>/<token>/`.

The node writes `ds=nocloud-net;s=http://<meta>/nocloud/<id>/<token>/` into the VM's
SMBIOS serial; cloud-init (or nebula-tiny's own client) GETs `meta-data` and `user-data`
(both must answer 200), then `vendor-data` and `network-config`, and may POST
`phone-home`. The token is compared, as its sha256, in constant time; a wrong token, an
unknown instance and a deleted one all get the same 404. Requests are rate limited per
instance, refused ones per client address. Nothing else is served but `/healthz`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import nats.errors
import yaml
from aiohttp import web
from aiohttp.typedefs import Handler
from nats.js import JetStreamContext

from nebula_core import nats_client
from nebula_core.config import Settings
from nebula_core.contract.commands import RecordBoot
from nebula_core.contract.limits import META_BODY_MAX_BYTES
from nebula_core.contract.node import guest_mac
from nebula_core.messaging import publish_command
from nebula_meta.model import Follower, Instances, Record, follow_events, follow_seeds

log = logging.getLogger("nebula.meta")

#: Who the recorded boot names: the service that relayed the guest's phone-home.
ACTOR = "system:meta"

MODEL = web.AppKey("model", Instances)
FOLLOWERS = web.AppKey("followers", list[Follower])
JS = web.AppKey("js", JetStreamContext)
SETTINGS = web.AppKey("settings", Settings)

_NOT_FOUND = "404: Not Found"
_DUMMY_HASH = hashlib.sha256(b"no such instance").hexdigest()


class RateLimiter:
    """A token bucket per key: `rate` requests a second, bursts up to `burst`."""

    def __init__(self, rate: float = 10.0, burst: float = 30.0, remember: int = 100_000) -> None:
        self.rate, self.burst, self.remember = rate, burst, remember
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.remember:
            self._buckets.popitem(last=False)
        return allowed


LIMITER = web.AppKey("limiter", RateLimiter)


def _authorised(request: web.Request) -> Record:
    """The instance named by the URL if its token is right; the same 404 otherwise.

    Rate limits: a request with the right token spends from its instance's budget; a
    refused one from the budget of the address it came from. Whoever knows an instance's
    id, but not its token, can therefore never use up that instance's requests."""
    limiter = request.app[LIMITER]
    try:
        instance_id: uuid.UUID | None = uuid.UUID(request.match_info["instance_id"])
    except ValueError:
        instance_id = None
    record = None if instance_id is None else request.app[MODEL].by_id.get(instance_id)
    given = hashlib.sha256(request.match_info["token"].encode()).hexdigest()
    expected = record.token_hash if record is not None else _DUMMY_HASH
    if not hmac.compare_digest(given, expected) or record is None:
        if not limiter.allow(f"refused:{request.remote}"):
            raise web.HTTPTooManyRequests(text="slow down")
        raise web.HTTPNotFound(text=_NOT_FOUND)
    if not limiter.allow(f"instance:{record.instance_id}"):
        raise web.HTTPTooManyRequests(text="slow down")
    return record


def _yaml(value: object) -> web.Response:
    return web.Response(text=yaml.safe_dump(value, default_flow_style=False, sort_keys=False), content_type="text/yaml")


routes = web.RouteTableDef()
PREFIX = "/nocloud/{instance_id}/{token}/"


@routes.get(PREFIX + "meta-data")
async def meta_data(request: web.Request) -> web.Response:
    record = _authorised(request)
    document: dict[str, object] = {
        "instance-id": str(record.instance_id),
        "local-hostname": record.hostname,
        "project-id": str(record.project_id),
        "tags": dict(record.tags),
    }
    if record.public_keys:  # cloud-init installs them for the image's default user
        document["public-keys"] = list(record.public_keys)
    return _yaml(document)


@routes.get(PREFIX + "user-data")
async def user_data(request: web.Request) -> web.Response:
    record = _authorised(request)
    model = request.app[MODEL]
    data = model.user_data(record.instance_id)
    if data is None and not model.seeds_read.is_set():
        raise web.HTTPServiceUnavailable(text="starting; retry")  # not an empty answer cloud-init would keep
    return web.Response(body=data or b"", content_type="application/octet-stream")


@routes.get(PREFIX + "vendor-data")
async def vendor_data(request: web.Request) -> web.Response:
    """A cloud-config making any stock cloud-init image phone home when it has finished,
    to this instance's own URL here (as the guest reached it), so its boot is recorded.
    A `phone_home` of the user's own user-data takes its place."""
    record = _authorised(request)
    token = request.match_info["token"]
    url = f"{request.scheme}://{request.host}/nocloud/{record.instance_id}/{token}/phone-home"
    config = {"phone_home": {"url": url, "post": ["instance_id"], "tries": 10}}
    return web.Response(text="#cloud-config\n" + yaml.safe_dump(config, sort_keys=False), content_type="text/plain")


@routes.get(PREFIX + "network-config")
async def network_config(request: web.Request) -> web.Response:
    """DHCP on the guest's one NIC, found by the MAC its node gives it (`guest_mac`)."""
    record = _authorised(request)
    nic = {"match": {"macaddress": guest_mac(record.instance_id)}, "dhcp4": True}
    return _yaml({"version": 2, "ethernets": {"nic0": nic}})


@routes.post(PREFIX + "phone-home")
async def phone_home(request: web.Request) -> web.Response:
    """Relay the boot to the orchestrators (`RecordBoot`), who record it once: a guest may
    repeat it, and one repeated within the command stream's duplicate window is stored
    once. Answered 200 once the command is stored; 503 (retry) while NATS cannot take it."""
    record = _authorised(request)
    await request.read()  # whatever the guest says (cloud-init sends its keys) is not kept
    command = RecordBoot(
        command_id=uuid.uuid5(record.instance_id, "booted"),
        instance_id=record.instance_id,
        requested_at=datetime.now(UTC),
        actor=ACTOR,
        booted_at=datetime.now(UTC),
    )
    try:
        await publish_command(request.app[JS], command)
    except (nats.errors.Error, TimeoutError) as err:
        log.warning("phone-home not relayed, retry asked instance=%s reason=%r", record.instance_id, err)
        raise web.HTTPServiceUnavailable(text="busy; retry", headers={"Retry-After": "1"}) from None
    log.info("phone-home instance=%s relayed", record.instance_id)
    return web.Response(text="ok\n")


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """200 once the instances and their seeds have been read and while both followers are
    well; 503 before, and while one is down (it is being restarted), naming it."""
    model = request.app[MODEL]
    followers = request.app[FOLLOWERS]
    status = "failing" if any(f.failure for f in followers) else "ok" if model.ready else "starting"
    return web.json_response(
        {
            "status": status,
            "instances": len(model.by_id),
            "followers": {f.name: f.failure or "ok" for f in followers},
            "skipped": {"events": model.skipped_events, "seeds": model.skipped_seeds},
        },
        status=200 if status == "ok" else 503,
    )


async def _follow(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    nc = await nats_client.connect(settings.nats_url, name="nebula-meta")
    js = nc.jetstream()
    app[JS] = js
    stop = asyncio.Event()
    app[FOLLOWERS].extend(
        Follower(name, functools.partial(follow, js, app[MODEL]))
        for name, follow in (("events", follow_events), ("seeds", follow_seeds))
    )
    tasks = [asyncio.create_task(follower.run(stop)) for follower in app[FOLLOWERS]]
    try:
        await asyncio.wait_for(app[MODEL].wait_ready(), 60)
    except TimeoutError:
        log.warning("still reading the instance history; serving what is known")
    yield
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await nc.drain()


@web.middleware
async def plain_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every 404 looks the same, whatever the reason: nothing to learn from probing."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return web.Response(status=404, text=_NOT_FOUND)


def make_app(settings: Settings, *, rate: float = 10.0, burst: float = 30.0) -> web.Application:
    app = web.Application(middlewares=[plain_errors], client_max_size=META_BODY_MAX_BYTES)
    app[SETTINGS] = settings
    app[MODEL] = Instances()
    app[FOLLOWERS] = []
    app[LIMITER] = RateLimiter(rate, burst)
    app.add_routes(routes)
    app.cleanup_ctx.append(_follow)
    return app


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    runner = web.AppRunner(make_app(settings), access_log=None)
    await runner.setup()
    for host, port in settings.meta_host_ports:  # loopback, and a managed network's bridge
        await web.TCPSite(runner, host, port).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
