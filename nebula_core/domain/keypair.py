"""SSH keypairs: a user's OpenSSH public keys, by name, for the instances they create."""

from __future__ import annotations

import uuid
from typing import ClassVar

from eventsourcing.domain import Aggregate, event

from nebula_core.contract.errors import IllegalTransition


class Keypair(Aggregate):
    KIND: ClassVar[str] = "keypair"

    @staticmethod
    def create_id(**_: object) -> uuid.UUID:
        return uuid.uuid4()

    @event("Created")
    def __init__(self, owner: str, name: str, public_key: str, fingerprint: str) -> None:
        #: The principal it belongs to (`user:<id>`, or the bootstrap admin).
        self.owner = owner
        self.name = name
        self.public_key = public_key
        self.fingerprint = fingerprint
        self.deleted = False

    def delete(self) -> None:
        if self.deleted:
            raise IllegalTransition(f"keypair {self.id} is already deleted")
        self._deleted()

    @event("Deleted")
    def _deleted(self) -> None:
        self.deleted = True
