"""The CLI's side of the HTTP API: where the API is, which token to send, and the calls.

Where the API is and which token to use, first found wins:

1. `--url` / `--token` on the command line;
2. `NEBULA_URL` / `NEBULA_TOKEN` in the environment;
3. `url = …` / `token = …` in `$XDG_CONFIG_HOME/nebula/config.toml` (`~/.config/…`);
4. for the token only: the `admin-token` file that `nebula up` writes under its state
   directory (`$NEBULA_STATE_DIR`; when that is not set, the default state directory of this
   user and then `/var/lib/nebula`), if this user may read it;
5. for the URL only: `http://127.0.0.1:8774`.

The config file is read only when the command line and the environment leave something
open, so a broken file never stands in the way of `--url … --token …`.

Responses are decoded into the API's own msgspec types (`nebula_core.contract.http`), so the
server and the CLI share one definition of every shape.
"""

from __future__ import annotations

import asyncio
import os
import tomllib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec

from nebula_core import config
from nebula_core.contract.http import EventRecord, Page

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8774"
#: Each request (not the event stream) must complete within this many seconds.
REQUEST_TIMEOUT_S = 60.0
#: The largest page the API hands out; lists follow `next` until it is null.
PAGE_LIMIT = 500


class ConfigError(Exception):
    """The CLI cannot tell where the API is or which token to send."""


class ApiError(Exception):
    """The API answered with an error: its status, stable `code`, `message` and `fields`."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or []

    def __str__(self) -> str:
        where = f"; fields: {', '.join(self.fields)}" if self.fields else ""
        return f"{self.message} (HTTP {self.status} {self.code}{where})"


class Unreachable(Exception):
    """No answer from the API at all: refused, unresolvable, timed out, cut off."""


# --- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The API to talk to and the token to present; `token_from` says where the token came from."""

    url: str
    token: str
    token_from: str


def config_file(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", str(Path.home()))) / ".config")
    return Path(base) / "nebula" / "config.toml"


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from err
    for key in ("url", "token"):
        if key in values and not isinstance(values[key], str):
            raise ConfigError(f"{path}: {key} must be a string")
    return values


def admin_token_files(environ: Mapping[str, str]) -> list[Path]:
    """Where `nebula up` keeps the bootstrap admin token, most specific first."""
    if environ.get("NEBULA_STATE_DIR"):
        return [Path(environ["NEBULA_STATE_DIR"]) / "admin-token"]
    candidates = []
    try:
        candidates.append(Path(config.load(environ).state_dir) / "admin-token")
    except (ValueError, OSError):
        pass  # a broken server configuration is the server's business, not the CLI's
    candidates.append(Path("/var/lib/nebula/admin-token"))
    return list(dict.fromkeys(candidates))


def normalise_url(url: str) -> str:
    """`http://host:8774`, `…/`, `…/v1` and `…/v1/` all name the same API."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"the API URL must start with http:// or https:// (got {url!r})")
    return url


def resolve(url: str | None, token: str | None, environ: Mapping[str, str] | None = None) -> Target:
    """The target from options, environment, config file and `nebula up`'s admin-token file."""
    environ = os.environ if environ is None else environ
    path = config_file(environ)
    given = [(token, "--token"), (environ.get("NEBULA_TOKEN"), "NEBULA_TOKEN")]
    url = url or environ.get("NEBULA_URL")
    needs_file = not url or not any(value and value.strip() for value, _ in given)
    from_file = _read_config_file(path) if needs_file else {}
    chosen_url = normalise_url(url or from_file.get("url") or DEFAULT_URL)
    for value, source in (*given, (from_file.get("token"), str(path))):
        if value and value.strip():
            return Target(chosen_url, value.strip(), source)
    unreadable = []
    for candidate in admin_token_files(environ):
        try:
            found = candidate.read_text().strip()
        except PermissionError:
            unreadable.append(str(candidate))
            continue
        except OSError:
            continue
        if found:
            return Target(chosen_url, found, str(candidate))
    hint = f" ({', '.join(unreadable)} exists but you may not read it)" if unreadable else ""
    raise ConfigError(f'no API token: pass --token, set NEBULA_TOKEN, or put token = "…" in {path}{hint}')


# --- the calls -------------------------------------------------------------------------


def _error_from(status: int, body: bytes, reason: str) -> ApiError:
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return ApiError(status, str(data.get("code", "error")), data["message"], list(data.get("fields") or []))
    text = body.decode(errors="replace").strip().splitlines()
    return ApiError(status, "error", text[0][:200] if text else reason or "no message")


class Api:
    """An HTTP session with the API; use as `async with Api(target) as api:`."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.target.token}", "User-Agent": "nebula-cli"},
            timeout=aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=None),
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._session is not None
        await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use Api as an async context manager"
        return self._session

    async def call(
        self, method: str, path: str, *, body: Any = None, params: Any = None, headers: dict[str, str] | None = None
    ) -> bytes:
        """The raw answer to one request; `ApiError` for a 4xx/5xx, `Unreachable` for no answer."""
        data = None if body is None else msgspec.json.encode(body)
        extra = {"Content-Type": "application/json", **(headers or {})} if data is not None else headers
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                async with self.session.request(
                    method, self.target.url + path, data=data, params=params, headers=extra
                ) as response:
                    raw = await response.read()
                    if response.status >= 400:
                        raise _error_from(response.status, raw, response.reason or "")
                    return raw
        except TimeoutError as err:
            raise Unreachable(f"the API at {self.target.url} did not answer within {REQUEST_TIMEOUT_S:.0f}s") from err
        except aiohttp.ClientError as err:
            raise Unreachable(describe_client_error(self.target.url, err)) from err

    async def get(self, path: str, into: type[T], params: Any = None) -> T:
        return _decode(await self.call("GET", path, params=params), into)

    async def post(self, path: str, body: Any, into: type[T], headers: dict[str, str] | None = None) -> T:
        return _decode(await self.call("POST", path, body=body, headers=headers), into)

    async def patch(self, path: str, body: Any, into: type[T], headers: dict[str, str] | None = None) -> T:
        return _decode(await self.call("PATCH", path, body=body, headers=headers), into)

    async def delete(self, path: str, into: type[T] | None = None) -> T | None:
        raw = await self.call("DELETE", path)
        return _decode(raw, into) if into is not None and raw else None

    async def all(
        self, path: str, into: type[T], params: Mapping[str, Any] | list[tuple[str, str]] | None = None
    ) -> list[T]:
        """Every item of a list, following `next` from page to page."""
        base = list(params.items()) if isinstance(params, Mapping) else list(params or [])
        items: list[T] = []
        cursor: str | None = None
        while True:
            query = [*base, ("limit", str(PAGE_LIMIT))] + ([("cursor", cursor)] if cursor else [])
            page = await self.get(path, Page, query)
            items.extend(msgspec.convert(item, into) for item in page.items)
            if not page.next:
                return items
            cursor = page.next

    async def events(self, since: int | None) -> AsyncIterator[EventRecord]:
        """The live event stream (`GET /v1/events`, Server-Sent Events) from after `since`."""
        headers = {"Accept": "text/event-stream"}
        if since is not None:
            headers["Last-Event-ID"] = str(since)
        try:
            async with self.session.get(self.target.url + "/v1/events", headers=headers) as response:
                if response.status >= 400:
                    raise _error_from(response.status, await response.read(), response.reason or "")
                data: list[str] = []
                async for raw in response.content:
                    line = raw.decode().rstrip("\r\n")
                    if line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif not line and data:  # a blank line ends one message
                        yield msgspec.json.decode("\n".join(data), type=EventRecord)
                        data = []
        except aiohttp.ClientError as err:
            raise Unreachable(describe_client_error(self.target.url, err)) from err


def _decode(raw: bytes, into: type[T]) -> T:
    try:
        return msgspec.json.decode(raw, type=into)
    except (msgspec.DecodeError, msgspec.ValidationError) as err:
        raise Unreachable(f"the API answered something this CLI does not understand ({err})") from err


def describe_client_error(url: str, err: aiohttp.ClientError) -> str:
    if isinstance(err, aiohttp.ClientConnectorError):
        # asyncio words a refusal "Connect call failed (…)"; the errno's own words are clearer.
        cause = err.os_error
        reason = os.strerror(cause.errno).lower() if isinstance(cause, ConnectionError) and cause.errno else None
        return f"cannot reach the API at {url}: {reason or cause.strerror or cause}"
    if isinstance(err, aiohttp.InvalidURL):
        return f"not a usable API URL: {url}"
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return f"the API at {url} closed the connection"
    return f"talking to the API at {url}: {type(err).__name__}: {err}"
