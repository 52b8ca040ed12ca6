"""Typed keys for what the application and its requests carry."""

import asyncpg
from aiohttp import web

import core_ext
from gateway.billing.service import BillingService
from gateway.checkout.service import CheckoutService
from gateway.config import Settings
from gateway.merchants import Caller, KeyCache
from gateway.payments import PaymentService
from gateway.webhooks.service import WebhookService

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
KEYS = web.AppKey("keys", KeyCache)
SERVICE = web.AppKey("payment_service", PaymentService)
WEBHOOKS = web.AppKey("webhook_service", WebhookService)
CHECKOUT = web.AppKey("checkout_service", CheckoutService)
BILLING = web.AppKey("billing_service", BillingService)
LIMITER = web.AppKey("rate_limiter", core_ext.risk.RateLimiter)
MERCHANT_ID = web.RequestKey("merchant_id", str)  # set by the auth middleware
CALLER = web.RequestKey("caller", Caller)  # set by the auth middleware
