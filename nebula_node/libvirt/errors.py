"""The node's own failure, besides the contract's typed errors."""

from __future__ import annotations

from nebula_core.contract.errors import NebulaError


class HypervisorError(NebulaError):
    """libvirt (or qemu-img, or an image source) failed; the message says how."""
