"""Typed keys for what the aiohttp application holds."""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.delivery.templates import Templates
from gateway.delivery.worker import Deliverer, Sender
from gateway.hooks import Hooks
from gateway.metrics import Metrics
from gateway.store.interface import Store

config_key = web.AppKey("config", GatewayConfig)
store_key = web.AppKey("store", Store)
metrics_key = web.AppKey("metrics", Metrics)
hooks_key = web.AppKey("hooks", Hooks)
templates_key = web.AppKey("templates", Templates)
sender_key = web.AppKey("sender", Sender)
deliverer_key = web.AppKey("deliverer", Deliverer)
# The background tasks (push processor, delivery worker, maintenance) by name, for /readyz.
workers_key = web.AppKey("workers", dict[str, asyncio.Task[None]])
