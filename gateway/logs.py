"""Logging setup: one JSON object per line on stderr, and the scrubber every log line and
every error answer passes.

Every line is scrubbed before it is written: a Luhn-valid run of 12..19 digits (a card
number, with or without single spaces or dashes) and anything shaped like a secret key are
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

CARD_DIGITS_MIN = 12  # the core accepts 12..19-digit card numbers
CARD_DIGITS_MAX = 19
REDACTED = "[redacted]"
# A run of at least 12 digits, single spaces or dashes allowed between them, wherever it
# stands: in "payment_method.card.4242..." or "x4242..." it is a card number all the same.
_DIGIT_RUN = re.compile(rf"(?<!\d)\d(?:[ -]?\d){{{CARD_DIGITS_MIN - 1},}}(?!\d)")
_SECRET_KEY = re.compile(r"sk_[A-Za-z0-9_\-]{16,}")


def holds_card_number(digits: str) -> bool:
    """Whether a run of digits is, or contains, a Luhn-valid 12..19-digit number. A run
    longer than 19 is checked window by window: a card number with digits glued on is
    still a card number."""
    if len(digits) <= CARD_DIGITS_MAX:
        return core_ext.validation.luhn_valid(digits)
    return any(core_ext.validation.luhn_valid(digits[start:start + size])
               for size in range(CARD_DIGITS_MIN, CARD_DIGITS_MAX + 1)
               for start in range(len(digits) - size + 1))


def _redact_card(match: re.Match[str]) -> str:
    digits = match[0].replace(" ", "").replace("-", "")
    return REDACTED if holds_card_number(digits) else match[0]


def scrub(line: str) -> str:
    """``line`` without card numbers or secret keys."""
    if "sk_" in line:
        line = _SECRET_KEY.sub("sk_[redacted]", line)
    return _DIGIT_RUN.sub(_redact_card, line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pgserver narrates every pg_ctl call at info; its warnings and errors still show.
    logging.getLogger("pgserver").setLevel(max(root.level, logging.WARNING))
