"""Logging setup: one JSON object per line on stderr, and the scrubber every log line and
every error answer passes.

Every line is scrubbed before it is written: card numbers (``core_ext.validation.
redact_card_numbers``: a run of 12 or more digits, single spaces or dashes allowed, that is
or holds a Luhn-valid 12..19-digit number) and anything shaped like a secret key are
replaced, so a careless log call cannot leak them (API.md: never logged). Error answers
quote client text (field names, query keys, paths) through the same ``scrub``.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

import core_ext

_SECRET_KEY = re.compile(r"sk_[A-Za-z0-9_\-]{16,}")


def scrub(line: str) -> str:
    """``line`` without card numbers (the core's scrubbing rule) or secret keys."""
    if "sk_" in line:
        line = _SECRET_KEY.sub("sk_[redacted]", line)
    scrubbed: str = core_ext.validation.redact_card_numbers(line)
    return scrubbed


class JsonFormatter(logging.Formatter):
    """Every request writes an access line (on by default, as users keep it), so the
    formatter is on the hot path: the second's timestamp text is kept for the next line."""

    _second = -1
    _second_text = ""

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        extra = getattr(record, "kassa", None)
        if extra:
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return scrub(orjson.dumps(entry, default=str).decode())


def configure_logging(level: str) -> None:
    # What the logging HOWTO ("Optimization") suggests switching off when unused: no
    # line names its caller's source line or its thread, and finding them costs every line.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pgserver narrates every pg_ctl call at info; its warnings and errors still show.
    logging.getLogger("pgserver").setLevel(max(root.level, logging.WARNING))
