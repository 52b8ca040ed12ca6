"""Kassa's gateway: HTTP, PostgreSQL, processors, metrics. All I/O lives here;
all computation on the hot path lives in ``core_ext``."""

__version__ = "0.1.0"
