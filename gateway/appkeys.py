"""Typed keys for what the application and its requests carry."""

import asyncpg
from aiohttp import web

from gateway.config import Settings
from gateway.merchants import KeyCache
from gateway.payments import PaymentService

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
KEYS = web.AppKey("keys", KeyCache)
SERVICE = web.AppKey("payment_service", PaymentService)
MERCHANT_ID = web.RequestKey("merchant_id", str)  # set by the auth middleware
