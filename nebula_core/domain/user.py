"""Users: a name and an API token, of which only the sha256 is ever recorded."""

from __future__ import annotations

import uuid
from typing import ClassVar

from eventsourcing.domain import Aggregate, event


class User(Aggregate):
    KIND: ClassVar[str] = "user"

    @staticmethod
    def create_id(**_: object) -> uuid.UUID:
        return uuid.uuid4()

    @event("Created")
    def __init__(self, name: str, token_hash: str, is_admin: bool = False) -> None:
        self.name = name
        self.token_hash = token_hash
        self.is_admin = is_admin

    @event("TokenRotated")
    def rotate_token(self, token_hash: str) -> None:
        self.token_hash = token_hash
