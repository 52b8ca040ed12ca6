"""Logging setup: one JSON object per line on stderr.

Every line is scrubbed before it is written: a Luhn-valid run of 12..19 digits (a card
number, with or without spaces or dashes) and anything shaped like a secret key are
replaced, so a careless log call cannot leak them (API.md: never logged).
"""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

_CARD_NUMBER = re.compile(r"(?<![\w.])(?:\d[ -]?){11,18}\d(?![\w.])")
_SECRET_KEY = re.compile(r"sk_[A-Za-z0-9_\-]{16,}")


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if index % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _redact_card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match[0])
    return "[redacted]" if _luhn_valid(digits) else match[0]


def scrub(line: str) -> str:
    """``line`` without card numbers or secret keys."""
    if "sk_" in line:
        line = _SECRET_KEY.sub("sk_[redacted]", line)
    return _CARD_NUMBER.sub(_redact_card, line)


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
