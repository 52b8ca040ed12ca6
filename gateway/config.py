"""Configuration: environment variables, overridden by command-line flags.

Every value is validated at start; a bad one is reported by name with what
was expected, never as a traceback. Limits carry their unit in their name.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import platformdirs

from core_ext import webhooks


class ConfigError(Exception):
    """One or more settings are invalid; the message lists each of them."""


def _integer(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise ValueError(f"must be an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return value

    return parse


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be one of 1, 0, true, false, yes, no, on, off")


def _database_url(text: str) -> str | None:
    if not text:
        return None
    if not text.startswith(("postgres://", "postgresql://")):
        raise ValueError("must be a postgresql:// URL")
    return text


def _public_url(text: str) -> str:
    """An http(s) origin, kept without a trailing slash (checkout URLs append paths)."""
    if not text:
        return ""
    if not text.startswith(("http://", "https://")) or any(c.isspace() for c in text):
        raise ValueError("must be an http:// or https:// URL")
    return text.rstrip("/")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text.lower()

    return parse


def _text(text: str) -> str:
    return text


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _retry_schedule(text: str) -> tuple[int, ...]:
    return webhooks.parse_retry_schedule(text)


def _default_data_dir() -> str:
    return platformdirs.user_data_dir("kassa", appauthor=False)


@dataclasses.dataclass(frozen=True)
class Field:
    env: str
    parse: Callable[[str], Any]
    default: Callable[[], str] | str
    help: str


FIELDS: dict[str, Field] = {
    "host": Field("KASSA_HOST", _text, "127.0.0.1", "address to listen on"),
    "port": Field("KASSA_PORT", _integer(1, 65535), "8080", "TCP port to listen on"),
    "public_url": Field(
        "KASSA_PUBLIC_URL",
        _public_url,
        "",
        "origin buyers reach checkout pages at; empty: the origin each API request came to",
    ),
    "workers": Field("KASSA_WORKERS", _integer(1, 64), "1", "worker processes sharing the port"),
    "database_url": Field(
        "DATABASE_URL", _database_url, "", "PostgreSQL URL; empty starts the embedded server"
    ),
    "data_dir": Field(
        "KASSA_DATA_DIR", _path, _default_data_dir, "embedded database and generated keys"
    ),
    "db_pool_min": Field("KASSA_DB_POOL_MIN", _integer(1, 100), "2", "connections per worker"),
    "db_pool_max": Field("KASSA_DB_POOL_MAX", _integer(1, 100), "10", "connections per worker"),
    "db_statement_timeout_ms": Field(
        "KASSA_DB_STATEMENT_TIMEOUT_MS", _integer(100, 600_000), "5000", "per statement"
    ),
    "db_acquire_timeout_ms": Field(
        "KASSA_DB_ACQUIRE_TIMEOUT_MS", _integer(10, 60_000), "2000", "wait for a pooled connection"
    ),
    "allow_pure_core": Field(
        "KASSA_ALLOW_PURE_CORE", _boolean, "0", "development only: serve on the pure-Python core"
    ),
    "master_key": Field(
        "KASSA_MASTER_KEY", _text, "", "base64 32-byte key; empty: generated into the data dir"
    ),
    "processor_timeout_ms": Field(
        "KASSA_PROCESSOR_TIMEOUT_MS", _integer(10, 120_000), "3000", "one processor call"
    ),
    "sandbox_latency_ms": Field(
        "KASSA_SANDBOX_LATENCY_MS", _integer(0, 60_000), "0", "simulated processor latency"
    ),
    "recovery_after_s": Field(
        "KASSA_RECOVERY_AFTER_S",
        _integer(1, 86_400),
        "30",
        "age of a processing payment to recover",
    ),
    "recovery_interval_s": Field(
        "KASSA_RECOVERY_INTERVAL_S", _integer(1, 3_600), "5", "how often recovery runs"
    ),
    "authorization_ttl_s": Field(
        "KASSA_AUTHORIZATION_TTL_S",
        _integer(1, 31 * 86_400),
        str(7 * 86_400),
        "uncaptured authorizations expire after this",
    ),
    "unconfirmed_payment_ttl_s": Field(
        "KASSA_UNCONFIRMED_PAYMENT_TTL_S",
        _integer(1, 31 * 86_400),
        "86400",
        "payments waiting before the processor expire after this",
    ),
    "idempotency_retention_s": Field(
        "KASSA_IDEMPOTENCY_RETENTION_S",
        _integer(86_400, 30 * 86_400),
        "86400",
        "idempotency keys are kept at least this long",
    ),
    "idempotency_cache_entries": Field(
        "KASSA_IDEMPOTENCY_CACHE_ENTRIES",
        _integer(0, 10_000_000),
        "100000",
        "in-process replay cache size",
    ),
    "group_commit": Field(
        "KASSA_GROUP_COMMIT", _boolean, "1", "batch concurrent writes into one transaction"
    ),
    "commit_batch_rows_max": Field(
        "KASSA_COMMIT_BATCH_ROWS_MAX", _integer(1, 10_000), "128", "items per transaction"
    ),
    "commit_wait_ms": Field(
        "KASSA_COMMIT_WAIT_MS",
        _integer(0, 50),
        "0",
        "extra wait for a batch to fill (0: batches fill while earlier ones commit)",
    ),
    "pipeline_inflight_max": Field(
        "KASSA_PIPELINE_INFLIGHT_MAX",
        _integer(1, 1_000_000),
        "4096",
        "writes waiting per pipeline before shedding load with 503",
    ),
    "shutdown_grace_s": Field(
        "KASSA_SHUTDOWN_GRACE_S", _integer(1, 600), "30", "time to finish in-flight requests"
    ),
    "rate_limit_per_s": Field(
        "KASSA_RATE_LIMIT_PER_S",
        _integer(0, 1_000_000),
        "500",
        "requests a second per API key and worker process (0: unlimited); per merchant: "
        "kassa merchants limits",
    ),
    "rate_limit_burst": Field(
        "KASSA_RATE_LIMIT_BURST",
        _integer(1, 1_000_000),
        "1000",
        "requests an API key may send at once before the rate applies",
    ),
    "velocity_window_s": Field(
        "KASSA_VELOCITY_WINDOW_S",
        _integer(1, 7 * 86_400),
        "3600",
        "sliding window of the card-testing velocity rules",
    ),
    "velocity_merchant_attempts_max": Field(
        "KASSA_VELOCITY_MERCHANT_ATTEMPTS_MAX",
        _integer(0, 100_000_000),
        "0",
        "authorizations per merchant per window (0: rule off)",
    ),
    "velocity_card_attempts_max": Field(
        "KASSA_VELOCITY_CARD_ATTEMPTS_MAX",
        _integer(0, 100_000_000),
        "50",
        "authorizations per card fingerprint per window (0: rule off)",
    ),
    "velocity_card_declines_max": Field(
        "KASSA_VELOCITY_CARD_DECLINES_MAX",
        _integer(0, 100_000_000),
        "5",
        "declines per card fingerprint per window before the card is refused (0: rule off)",
    ),
    "body_read_timeout_ms": Field(
        "KASSA_BODY_READ_TIMEOUT_MS",
        _integer(100, 600_000),
        "10000",
        "a request body must arrive within this (else 408)",
    ),
    "webhook_allow_private": Field(
        "KASSA_WEBHOOK_ALLOW_PRIVATE",
        _boolean,
        "0",
        "development and tests only: webhook URLs may reach loopback, private, link-local "
        "addresses",
    ),
    "webhook_retry_schedule_s": Field(
        "KASSA_WEBHOOK_RETRY_SCHEDULE_S",
        _retry_schedule,
        ",".join(map(str, webhooks.DEFAULT_RETRY_SCHEDULE_S)),
        "seconds before each retry of a failed webhook delivery; then it is failed",
    ),
    "billing_lease_s": Field(
        "KASSA_BILLING_LEASE_S",
        _integer(2, 3_600),
        "30",
        "a subscription a scheduler claimed is left to it this long (after a crash, its "
        "renewal is taken up again this much later); longer than a batch of charges takes",
    ),
    "webhook_timeout_s": Field(
        "KASSA_WEBHOOK_TIMEOUT_S",
        _integer(1, 300),
        "15",
        "a webhook receiver must answer 2xx within this",
    ),
    "webhook_concurrency": Field(
        "KASSA_WEBHOOK_CONCURRENCY",
        _integer(1, 10_000),
        "64",
        "webhook deliveries in flight per worker process",
    ),
    "webhook_endpoint_concurrency": Field(
        "KASSA_WEBHOOK_ENDPOINT_CONCURRENCY",
        _integer(1, 10_000),
        "8",
        "webhook deliveries in flight per endpoint and worker process",
    ),
    "webhook_disable_after_s": Field(
        "KASSA_WEBHOOK_DISABLE_AFTER_S",
        _integer(1, 30 * 86_400),
        str(5 * 86_400),
        "an endpoint whose deliveries have all failed for this long is disabled",
    ),
    "metrics_token": Field(
        "KASSA_METRICS_TOKEN", _text, "", "bearer token /metrics requires (empty: open)"
    ),
    "log_level": Field(
        "KASSA_LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info", "log level"
    ),
}


SECRET_FIELDS = frozenset({"master_key", "database_url", "metrics_token"})


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str
    port: int
    public_url: str
    workers: int
    database_url: str | None
    data_dir: Path
    db_pool_min: int
    db_pool_max: int
    db_statement_timeout_ms: int
    db_acquire_timeout_ms: int
    allow_pure_core: bool
    master_key: str
    processor_timeout_ms: int
    sandbox_latency_ms: int
    recovery_after_s: int
    recovery_interval_s: int
    authorization_ttl_s: int
    unconfirmed_payment_ttl_s: int
    idempotency_retention_s: int
    idempotency_cache_entries: int
    group_commit: bool
    commit_batch_rows_max: int
    commit_wait_ms: int
    pipeline_inflight_max: int
    shutdown_grace_s: int
    rate_limit_per_s: int
    rate_limit_burst: int
    velocity_window_s: int
    velocity_merchant_attempts_max: int
    velocity_card_attempts_max: int
    velocity_card_declines_max: int
    body_read_timeout_ms: int
    webhook_allow_private: bool
    webhook_retry_schedule_s: tuple[int, ...]
    billing_lease_s: int
    webhook_timeout_s: int
    webhook_concurrency: int
    webhook_endpoint_concurrency: int
    webhook_disable_after_s: int
    metrics_token: str
    log_level: str

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def local_url(self) -> str:
        """The base URL a client on this machine reaches ``kassa serve`` at."""
        host = _ANY_ADDRESS_LOOPBACK.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


# Listening on every address: a client on this machine connects to the loopback one.
_ANY_ADDRESS_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Settings from ``environ`` (default ``os.environ``), then ``overrides`` (flags).

    Overrides given as strings are parsed like the environment; ``None`` means
    "not given". Raises ConfigError naming every bad value at once.
    """
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, field in FIELDS.items():
        given = overrides.get(name)
        source = f"--{name.replace('_', '-')}"
        if given is None:
            source = field.env
            given = environ.get(field.env)
        if given is None:
            given = field.default() if callable(field.default) else field.default
            source = f"{field.env} (default)"
        if not isinstance(given, str):
            given = str(given)
        try:
            values[name] = field.parse(given)
        except ValueError as exc:
            shown = "<hidden>" if name in SECRET_FIELDS else repr(given)
            problems.append(f"{source}={shown}: {exc}")
    if not problems and values["db_pool_min"] > values["db_pool_max"]:
        problems.append("KASSA_DB_POOL_MIN must not exceed KASSA_DB_POOL_MAX")
    if not problems and values["recovery_after_s"] * 1000 <= values["processor_timeout_ms"]:
        # Recovery would settle payments whose request is still waiting on the processor.
        problems.append("KASSA_RECOVERY_AFTER_S must be longer than KASSA_PROCESSOR_TIMEOUT_MS")
    if not problems and values["webhook_endpoint_concurrency"] > values["webhook_concurrency"]:
        problems.append(
            "KASSA_WEBHOOK_ENDPOINT_CONCURRENCY must not exceed KASSA_WEBHOOK_CONCURRENCY"
        )
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return Settings(**values)
