"""Images: what instances boot from — a qcow2 disk, or a kernel and initrd for direct boot."""

from __future__ import annotations

import uuid
from typing import ClassVar

from eventsourcing.domain import Aggregate, event

from nebula_core.contract.errors import IllegalTransition
from nebula_core.contract.types import ImageFormat


class Image(Aggregate):
    KIND: ClassVar[str] = "image"

    @staticmethod
    def create_id(**_: object) -> uuid.UUID:
        return uuid.uuid4()

    @event("Registered")
    def __init__(
        self,
        name: str,
        format: ImageFormat,
        source: str,
        sha256: str,
        size: int,
        min_disk_gb: int = 0,
        default_user: str = "",
    ) -> None:
        self.name = name
        self.format = format
        self.source = source
        self.sha256 = sha256
        self.size = size
        self.min_disk_gb = min_disk_gb
        self.default_user = default_user
        self.deleted = False

    def delete(self) -> None:
        if self.deleted:
            raise IllegalTransition(f"image {self.id} is already deleted")
        self._deleted()

    @event("Deleted")
    def _deleted(self) -> None:
        self.deleted = True
