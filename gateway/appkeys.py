"""Typed keys for what the aiohttp application holds."""

from __future__ import annotations

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.metrics import Metrics
from gateway.store import Store

config_key = web.AppKey("config", GatewayConfig)
store_key = web.AppKey("store", Store)
metrics_key = web.AppKey("metrics", Metrics)
