"""Where the operations files are: `ops/` of the source tree (the guest-image builder,
the libvirtd set-up, NATS configs, systemd units), shipped in the wheel as the data-only
namespace package `nebula_ops`. Nothing in `ops/` is Python the product imports."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def ops_dir() -> Path:
    """The directory of `nebula_ops` (in a source checkout, `ops/` itself)."""
    spec = importlib.util.find_spec("nebula_ops")
    for location in spec.submodule_search_locations or [] if spec else []:
        if Path(location).is_dir():
            return Path(location)
    raise FileNotFoundError("the operations files (package nebula_ops) are not installed")


def ops_path(*parts: str) -> Path:
    """A file under `ops/`, e.g. `ops_path("guest", "build-tiny.sh")`."""
    return ops_dir().joinpath(*parts)
