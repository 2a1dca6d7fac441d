"""NATS identities for a Nebula that starts its own nats-server: one user and password
per role, generated once and kept 0600 under `<state>/nats/credentials/`, and the
server's `authorization` block made from `nebula_core.contract.permissions`.

The server configuration is written as JSON (which nats-server's configuration format
accepts), from structures: no user text is pasted into it.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import msgspec

from nebula_core import config
from nebula_core.config import Settings
from nebula_core.contract import permissions
from nebula_core.nats_client import servers


def with_user(url: str, user: str, password: str) -> str:
    """`url` (each server of a comma-separated list) authenticating as `user`."""
    parts = []
    for server in servers(url):
        parsed = urlparse(server)
        host = parsed.hostname or "127.0.0.1"
        netloc = f"{user}:{password}@{host}" + (f":{parsed.port}" if parsed.port else "")
        parts.append(urlunparse(parsed._replace(netloc=netloc)))
    return ",".join(parts)


def control_users(node_ids: Iterable[str] = ()) -> list[str]:
    """The users a Nebula's NATS knows: the operator's, each control-plane role, the fleet
    simulator, and one per node."""
    return [
        permissions.ADMIN_USER,
        *permissions.CONTROL_ROLES,
        permissions.SIM_USER,
        *(permissions.node_user(n) for n in node_ids),
    ]


class NatsCredentials:
    """The passwords of NATS users, one file each (0600) in a directory (0700)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def password(self, user: str) -> str:
        """`user`'s password, generated the first time it is asked for."""
        if user != permissions.ROUTE_USER:
            permissions.role(user)  # refuses a user that has no role
        path = self.directory / user
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # made meanwhile by another process
                pass
            else:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def url(self, base_url: str, user: str) -> str:
        """`base_url` with `user`'s credentials."""
        return with_user(base_url, user, self.password(user))

    def authorization(self, users: Iterable[str]) -> dict[str, object]:
        """nats-server's `authorization` block for `users`."""
        return {"users": permissions.server_users({user: self.password(user) for user in users})}

    def write_server_config(self, path: Path, users: Iterable[str]) -> Path:
        """A whole nats-server configuration holding the authorization for `users` (given
        with `--config`; 0600: it holds their passwords)."""
        return _write_secret(path, json.dumps({"authorization": self.authorization(users)}, indent=2))

    def write_include(self, path: Path, users: Iterable[str]) -> Path:
        """The authorization for `users` as a file that a nats-server configuration
        includes (`include nebula-users.conf`, as `ops/nats/*.conf` do; 0600)."""
        return _write_secret(path, "authorization: " + json.dumps(self.authorization(users), indent=2) + "\n")

    def write_routes(self, path: Path, routes: Iterable[str]) -> Path:
        """A cluster's route authentication and its routes (`host:port` each), as a file
        that the `cluster` block of a nats-server configuration includes (0600): each
        server accepts a route with this password and offers it on the routes it opens."""
        user, password = permissions.ROUTE_USER, self.password(permissions.ROUTE_USER)
        urls = []
        for route in routes:
            host, sep, port = route.rpartition(":")
            if not sep or not host or not port.isdigit() or "/" in host or "@" in host:
                raise ValueError(f"route {route!r} is not host:port")
            urls.append(f"nats-route://{user}:{password}@{host}:{port}")
        if not urls:
            raise ValueError("no route given")
        block = {"authorization": {"user": user, "password": password}, "routes": urls}
        text = "".join(f"{key}: {json.dumps(value)}\n" for key, value in block.items())
        return _write_secret(path, text)


def _write_secret(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def operator_settings(
    settings: Settings, environ: Mapping[str, str] | None = None, *, user: str = permissions.ADMIN_USER
) -> Settings:
    """`settings` for a command run by hand on the host of a `nebula up` (`nebula replay`
    and `nebula init` as the operator, `nebula sim` as the simulator): where
    NEBULA_NATS_URL is not set, `user`'s NATS identity from the state directory, as the CLI
    finds the admin token there."""
    environ = os.environ if environ is None else environ
    credentials = NatsCredentials(Path(settings.state_dir) / "nats" / "credentials")
    if config.env_name("nats_url") in environ or not (credentials.directory / user).exists():
        return settings
    return msgspec.structs.replace(settings, nats_url=credentials.url(settings.nats_url, user))
