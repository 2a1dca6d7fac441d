"""Projects: the unit of tenancy. Members hold roles; quotas bound what it may hold."""

from __future__ import annotations

import uuid
from typing import ClassVar

from eventsourcing.domain import Aggregate, event

from nebula_core.contract.errors import IllegalTransition, NotFound
from nebula_core.contract.types import Quotas, Role


class Project(Aggregate):
    KIND: ClassVar[str] = "project"

    @staticmethod
    def create_id(**_: object) -> uuid.UUID:
        return uuid.uuid4()

    @event("Created")
    def __init__(self, name: str, description: str, tags: dict[str, str], quotas: Quotas) -> None:
        self.name = name
        self.description = description
        self.tags = dict(tags)
        self.quotas = quotas
        self.members: dict[uuid.UUID, Role] = {}
        self.deleted = False

    def update(
        self,
        *,
        name: str | None = None,
        description: str | None = None,
        tags: dict[str, str] | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        """Change what was given; unchanged fields keep their values. A no-op records nothing."""
        self._require_live()
        new = (
            self.name if name is None else name,
            self.description if description is None else description,
            self.tags if tags is None else dict(tags),
            self.quotas if quotas is None else quotas,
        )
        if new != (self.name, self.description, self.tags, self.quotas):
            self._updated(*new)

    @event("Updated")
    def _updated(self, name: str, description: str, tags: dict[str, str], quotas: Quotas) -> None:
        self.name, self.description, self.tags, self.quotas = name, description, dict(tags), quotas

    def set_member(self, user_id: uuid.UUID, role: Role) -> None:
        """Give `user_id` `role` in this project (adding or changing); idempotent."""
        self._require_live()
        if self.members.get(user_id) != role:
            self._member_set(user_id, role)

    @event("MemberSet")
    def _member_set(self, user_id: uuid.UUID, role: Role) -> None:
        self.members[user_id] = role

    def remove_member(self, user_id: uuid.UUID) -> None:
        self._require_live()
        if user_id not in self.members:
            raise NotFound(f"user {user_id} is not a member of project {self.id}")
        self._member_removed(user_id)

    @event("MemberRemoved")
    def _member_removed(self, user_id: uuid.UUID) -> None:
        del self.members[user_id]

    def delete(self) -> None:
        self._require_live()
        self._deleted()

    @event("Deleted")
    def _deleted(self) -> None:
        self.deleted = True

    def _require_live(self) -> None:
        if self.deleted:
            raise IllegalTransition(f"project {self.id} is deleted")
