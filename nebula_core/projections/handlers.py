"""Every read model's handlers in one table of event type → handler.

A handler takes the open transaction, the event and its stream sequence, and writes
plain parameterised SQL. Handlers are applied strictly in stream order by the projector,
exactly once per event (see `nebula_core.projections.projector`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import asyncpg

from nebula_core.contract.events import Event
from nebula_core.projections import images, instances, keypairs, nodes, projects, users

Handler = Callable[[asyncpg.Connection, Any, int], Awaitable[None]]

#: msgspec's struct classes are typed by their metaclass, hence the one cast.
HANDLERS = cast(
    "dict[type[Event], Handler]",
    {
        **projects.HANDLERS,
        **users.HANDLERS,
        **images.HANDLERS,
        **nodes.HANDLERS,
        **instances.HANDLERS,
        **keypairs.HANDLERS,
    },
)

#: The tables `nebula replay` empties and rebuilds, children first.
TABLES = ("memberships", "node_claims", "instances", "nodes", "images", "keypairs", "users", "projects")
