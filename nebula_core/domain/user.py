"""Users: a name and an API token, of which only the sha256 is ever recorded.

A user's token works while the user is enabled and not deleted; a rotation replaces it
(the one before stops working), disabling suspends it, deleting ends the user for good.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from eventsourcing.domain import Aggregate, event

from nebula_core.contract.errors import IllegalTransition


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
        self.disabled = False
        self.deleted = False

    def rotate_token(self, token_hash: str) -> None:
        """Replace the token (a disabled user's too: it works once they are enabled)."""
        self._require_live()
        self._token_rotated(token_hash)

    @event("TokenRotated")
    def _token_rotated(self, token_hash: str) -> None:
        self.token_hash = token_hash

    def disable(self) -> None:
        """Suspend the user's token; disabling a disabled user records nothing."""
        self._require_live()
        if not self.disabled:
            self._disabled()

    @event("Disabled")
    def _disabled(self) -> None:
        self.disabled = True

    def enable(self) -> None:
        """Let the user's token work again; enabling an enabled user records nothing."""
        self._require_live()
        if self.disabled:
            self._enabled()

    @event("Enabled")
    def _enabled(self) -> None:
        self.disabled = False

    def delete(self) -> None:
        self._require_live()
        self._deleted()

    @event("Deleted")
    def _deleted(self) -> None:
        self.deleted = True

    def _require_live(self) -> None:
        if self.deleted:
            raise IllegalTransition(f"user {self.id} is deleted")
