"""Settings: every process reads them from `NEBULA_*` environment variables; a TOML file
(`NEBULA_CONFIG`, default `/etc/nebula/nebula.toml`) may add to them, and the environment
wins. Each field's variable is its name in upper case with the `NEBULA_` prefix."""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from nebula_core.contract.image_sources import ImageSources

DEFAULT_CONFIG_FILE = "/etc/nebula/nebula.toml"


def _default_state_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/nebula"
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "nebula")


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    nats_url: str = "nats://127.0.0.1:4222"
    #: Empty: `nebula up` runs an embedded Postgres under the state directory.
    pg_dsn: str = ""
    admin_token: str = ""
    api_listen: str = "127.0.0.1:8774"
    #: Where the metadata service listens: host:port, comma separated for several.
    meta_listen: str = "127.0.0.1:8775"
    state_dir: str = msgspec.field(default_factory=_default_state_dir)
    #: JetStream replicas for streams and buckets: 1 on one server, 3 on a cluster.
    nats_replicas: int = 1
    heartbeat_interval: float = 5.0
    # --- API ---------------------------------------------------------------------------
    #: Requests per second each token may make, on average (0: no limit), and how many it
    #: may make at once beyond that; then 429 with Retry-After. Per API process; the
    #: bootstrap admin token is not limited.
    api_rate: float = 50.0
    api_burst: int = 200
    #: Event streams (`GET /v1/events`) each token may hold open at once, per API process.
    api_event_streams: int = 8
    # --- orchestrator ------------------------------------------------------------------
    #: "spread" (fewest claims first) or "pack" (fullest node first).
    placement_strategy: Literal["spread", "pack"] = "spread"
    #: How long a node may stay down before its instances are rebuilt elsewhere.
    evacuation_grace: float = 60.0
    #: How often instances stuck in a transitional state are re-driven.
    reconcile_interval: float = 30.0
    #: Request/reply with a node: timeout of one try, and how many tries.
    node_timeout: float = 60.0
    node_retries: int = 3
    # --- node agent --------------------------------------------------------------------
    node_id: str = msgspec.field(default_factory=socket.gethostname)
    region: str = "default"
    libvirt_uri: str = "qemu:///system"
    #: The metadata service as a VM sees it; empty: where this node's own one answers (the
    #: bridge's address on a managed network, 10.0.2.2 on user-mode networking, at the
    #: port of `meta_listen`). Set it when the metadata service runs on another host.
    meta_url: str = ""
    #: Capacity offered to placement; 0 means "detect from libvirt".
    node_vcpus: int = 0
    node_ram_mb: int = 0
    node_disk_gb: int = 0
    cpu_overcommit: float = 4.0
    ram_overcommit: float = 1.0
    disk_overcommit: float = 1.0
    #: Ask for KVM acceleration (used only if /dev/kvm works); off: QEMU's TCG emulation.
    node_kvm: bool = False
    #: The libvirt network guests join: defined (NAT, DHCP on `node_subnet`) and started
    #: when missing; "user": QEMU's user-mode networking, where a guest reaches its host -
    #: and the metadata service - at 10.0.2.2 (also the fallback where no network can be made).
    node_network: str = "nebula"
    node_subnet: str = "10.213.0.0/24"
    #: How often the node looks for its guests' leased addresses (0: never).
    node_address_interval: float = 3.0
    # --- images (API and node agent) ---------------------------------------------------
    #: Directories local image sources (a path or file:// URL) must lie under, separated by
    #: ':' or ','; empty: the state directory's images/ (where `nebula up` builds nebula-tiny).
    image_roots: str = ""
    #: Let http(s) image sources reach loopback, link-local, private-use and this host's
    #: own addresses (off: only globally routable ones, so images cannot probe the inside).
    image_allow_private: bool = False

    @property
    def images_dir(self) -> Path:
        return Path(self.state_dir) / "images"

    @property
    def image_sources(self) -> ImageSources:
        """Where images may come from (`image_roots`, `image_allow_private`)."""
        roots = [part.strip() for part in re.split(r"[:,]", self.image_roots) if part.strip()]
        return ImageSources(roots=tuple(roots) or (str(self.images_dir),), allow_private=self.image_allow_private)

    @property
    def instances_dir(self) -> Path:
        return Path(self.state_dir) / "instances"

    @property
    def api_host_port(self) -> tuple[str, int]:
        return _host_port(self.api_listen)

    @property
    def meta_host_port(self) -> tuple[str, int]:
        """The first address the metadata service listens on."""
        return self.meta_host_ports[0]

    @property
    def meta_host_ports(self) -> list[tuple[str, int]]:
        """Every address the metadata service listens on (`meta_listen`: comma separated)."""
        return [_host_port(part.strip()) for part in self.meta_listen.split(",") if part.strip()]


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host or "0.0.0.0", int(port)


def env_name(field: str) -> str:
    return f"NEBULA_{field.upper()}"


def load(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from the TOML file, then the environment, then explicit `overrides`."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    path = Path(environ.get("NEBULA_CONFIG", DEFAULT_CONFIG_FILE))
    if path.is_file():
        values.update(tomllib.loads(path.read_text()))
    for field in Settings.__struct_fields__:
        if env_name(field) in environ:
            values[field] = environ[env_name(field)]
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as err:
        raise ValueError(f"configuration: {err}") from err
