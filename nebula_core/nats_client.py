"""Connecting to NATS the same way in every process: named, logging one line per error."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

import nats
from nats.aio.client import Client as NATS

from nebula_core.contract.permissions import inbox_prefix
from nebula_core.contract.redaction import redacted_url

log = logging.getLogger("nebula.nats")


async def _on_error(err: Exception) -> None:
    log.warning("nats: %s: %s", type(err).__name__, err)


async def _quiet(err: Exception) -> None:
    log.debug("nats: %s: %s", type(err).__name__, err)


async def _on_disconnect() -> None:
    log.warning("nats: disconnected")


async def _on_reconnect() -> None:
    log.info("nats: reconnected")


def servers(url: str) -> list[str]:
    """`NEBULA_NATS_URL` may list a cluster's servers, comma-separated."""
    return [part.strip() for part in url.split(",") if part.strip()]


def user_of(url: str) -> str | None:
    """The NATS user a URL authenticates as (`nats://user:password@host`), if any."""
    first = servers(url)
    return (urlparse(first[0]).username or None) if first else None


def identity_options(url: str) -> dict[str, Any]:
    """What every connection of the user in `url` sets: its own inbox, the only one its
    permissions let it subscribe to (see `nebula_core.contract.permissions`)."""
    user = user_of(url)
    return {"inbox_prefix": inbox_prefix(user)} if user else {}


def pull_inbox(url: str) -> bytes:
    """The inbox prefix of a JetStream pull subscription by the user in `url`: nats-py and
    FastStream default it to the shared `_INBOX.`, which no role may subscribe to."""
    user = user_of(url)
    return f"{inbox_prefix(user) if user else '_INBOX'}.".encode()


def redacted(url: str) -> str:
    """`url` fit for a message or a log: passwords (`nats://user:secret@host`) and tokens
    (`nats://secret@host`) replaced, in each server's URL."""
    return ",".join(redacted_url(part) for part in servers(url))


async def connect(url: str, *, name: str, once: bool = False, **options: Any) -> NATS:
    """A NATS connection for role `name`. `once`: fail fast instead of retrying (CLI use)."""
    defaults: dict[str, Any] = {
        "name": name,
        "error_cb": _on_error,
        "disconnected_cb": _on_disconnect,
        "reconnected_cb": _on_reconnect,
    }
    if once:
        # Two tries, no noise: the caller reports the one error that matters.
        defaults.update(
            connect_timeout=3,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
            error_cb=_quiet,
        )
    else:
        defaults.update(max_reconnect_attempts=-1, reconnect_time_wait=1)
    try:
        return await nats.connect(servers(url), **{**defaults, **identity_options(url), **options})
    except (OSError, nats.errors.NoServersError, TimeoutError) as err:
        raise ConnectionError(f"cannot reach NATS at {redacted(url)}: {err or type(err).__name__}") from err
