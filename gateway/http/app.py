"""The aiohttp application: typed app keys, resources opened in cleanup_ctx, the middleware
chain and the routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from aiohttp import web

import core_ext
from gateway import metrics, observability, recovery
from gateway.billing.scheduler import Scheduler
from gateway.billing.service import BillingService
from gateway.cards import CardVault, load_master_key
from gateway.checkout import handlers as checkout_pages
from gateway.checkout.service import CheckoutService, CsrfTokens
from gateway.config import Settings
from gateway.http import routes
from gateway.http.answers import BODY_BYTES_MAX
from gateway.http.appkeys import BILLING, CHECKOUT, KEYS, LIMITER, POOL, SERVICE, SETTINGS, WEBHOOKS
from gateway.http.middleware import (
    auth_middleware,
    drop_server_header,
    error_middleware,
    install_protocol_error_answers,
    observability_middleware,
)
from gateway.idempotency import IdempotencyStore
from gateway.merchants import KeyCache, LimitDefaults
from gateway.payments import PaymentService, batch_settings
from gateway.processors.instrumented import InstrumentedConnector
from gateway.processors.sandbox import SandboxConnector
from gateway.store import database
from gateway.stripe import routes as stripe_routes
from gateway.webhooks.deliverer import Deliverer
from gateway.webhooks.secrets import SecretBox
from gateway.webhooks.service import WebhookService

SANDBOX_POOL_CONNECTIONS_MAX = 4  # the sandbox processor's own books, apart from ours


class CoreNotCompiledError(RuntimeError):
    pass


def require_compiled_core(settings: Settings) -> None:
    """Production traffic is never served on the pure-Python core by accident."""
    if not core_ext.COMPILED and not settings.allow_pure_core:
        raise CoreNotCompiledError(
            f"refusing to serve: {core_ext.BUILD}. Reinstall with a C compiler "
            "(pip install .), or set KASSA_ALLOW_PURE_CORE=1 for development."
        )


def _services_ctx(dsn: str) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        master_key = load_master_key(settings.master_key, settings.data_dir)
        vault = CardVault(master_key)
        secrets = SecretBox(master_key)
        pool = await database.create_pool(settings, dsn)
        # The sandbox stands for another company's system: its own connections, so a
        # processor call made while we hold a connection can never starve our pool.
        # Its books need not wait for our disk: they simulate another company's system,
        # and an asynchronous commit survives any crash of Kassa (only PostgreSQL's own
        # crash could lose the last few ms, which recovery then reads as "never sent").
        sandbox_pool = await database.create_pool(
            settings.replace(db_pool_min=1, db_pool_max=SANDBOX_POOL_CONNECTIONS_MAX),
            dsn,
            application_name="kassa-sandbox",
            synchronous_commit=False,
        )
        connector = InstrumentedConnector(
            SandboxConnector(sandbox_pool, settings.sandbox_latency_ms, batch_settings(settings)),
            settings.processor_timeout_ms / 1000,
        )
        observability.instrument_pool(pool)
        idempotency = IdempotencyStore(
            settings.idempotency_cache_entries, settings.idempotency_retention_s
        )
        app[POOL] = pool
        app[SERVICE] = PaymentService(pool, connector, vault, idempotency, settings)
        # Every process delivers: handed the deliveries it committed, claiming the rest.
        deliverer = Deliverer(pool, secrets, settings)
        app[SERVICE].outbox.connect(deliverer.lease_s, deliverer.handoff)
        app[WEBHOOKS] = WebhookService(
            pool, secrets, idempotency, settings, deliverer.wake, deliverer.forget_endpoint
        )
        app[CHECKOUT] = CheckoutService(
            pool, app[SERVICE], idempotency, settings, CsrfTokens(master_key)
        )
        await deliverer.start()
        # Every process schedules renewals too: claims with SKIP LOCKED share the work,
        # and a commit that makes work due wakes this process's scheduler at once.
        scheduler = Scheduler(pool, app[SERVICE], settings)
        app[BILLING] = BillingService(
            pool, idempotency, settings, app[SERVICE].outbox, scheduler.wake
        )
        await scheduler.start()
        background = asyncio.create_task(
            recovery.run_forever(pool, app[SERVICE], connector, settings, app[CHECKOUT])
        )
        sampler = asyncio.create_task(observability.sample_forever(app))
        yield
        background.cancel()
        sampler.cancel()
        await asyncio.gather(background, sampler, return_exceptions=True)
        await scheduler.close()
        await deliverer.close()
        await app[SERVICE].close()
        await connector.close()
        await pool.close()
        await sandbox_pool.close()

    return ctx


def create_app(settings: Settings, dsn: str) -> web.Application:
    require_compiled_core(settings)
    metrics.install()
    install_protocol_error_answers()
    app = web.Application(
        client_max_size=BODY_BYTES_MAX,
        middlewares=[observability_middleware, error_middleware, auth_middleware],
    )
    app[SETTINGS] = settings
    app[KEYS] = KeyCache(
        LimitDefaults.from_settings(settings), settings.db_acquire_timeout_ms / 1000
    )
    app[LIMITER] = core_ext.risk.RateLimiter()
    app.on_response_prepare.append(drop_server_header)
    app.cleanup_ctx.append(_services_ctx(dsn))
    routes.setup(app)
    stripe_routes.setup(app)  # /stripe/v1: Stripe's wire protocol over the same services
    checkout_pages.setup(app)
    return app
