"""Typed application state: what lives as long as the app (no module globals)."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NATS

from nebula_core.api.metrics import Metrics
from nebula_core.api.writes import Writer
from nebula_core.config import Settings

SETTINGS = web.AppKey("settings", Settings)
NATS_CLIENT = web.AppKey("nats", NATS)
POOL = web.AppKey("pool", asyncpg.Pool)
WRITER = web.AppKey("writer", Writer)
METRICS = web.AppKey("metrics", Metrics)
