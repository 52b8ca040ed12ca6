"""Opaque object ids with a type prefix (API.md): ``pay_``, ``re_``, ``tok_``, ..."""

import hashlib
import re
import secrets

from gateway.logs import scrub

ID_RANDOM_BYTES = 16  # 128 random bits: collisions are not a practical concern
# Exactly what new_id and keyed_id issue: a lower-case prefix, "_", the hex digits.
ISSUED_ID = re.compile(rf"[a-z]{{2,5}}_[0-9a-f]{{{2 * ID_RANDOM_BYTES}}}")


def whole(text: str) -> bool:
    """Whether the scrubber leaves ``text`` as it is. About 0.3% of random hex strings hold
    a Luhn-valid run of 12+ digits; an id like that would be mangled in every log line and
    answer that names it, so none is ever issued."""
    return scrub(text) == text


def new_id(prefix: str) -> str:
    # One urandom read as hex: a per-character choice cost ~4% of a worker under load.
    while True:
        issued = prefix + "_" + secrets.token_hex(ID_RANDOM_BYTES)
        if whole(issued):
            return issued


def keyed_id(prefix: str, merchant_id: str, idempotency_key: str) -> str:
    """The same id for every attempt of one (merchant, Idempotency-Key): what a processor
    deduplicates a retried operation by. Same shape as ``new_id``'s ids."""
    seed = f"{merchant_id}\x00{idempotency_key}"
    attempt = 0
    while True:  # still deterministic: the first digest the scrubber leaves whole
        digest = hashlib.sha256(seed.encode()).hexdigest()
        issued = prefix + "_" + digest[: 2 * ID_RANDOM_BYTES]
        if whole(issued):
            return issued
        attempt += 1
        seed = f"{merchant_id}\x00{idempotency_key}\x00{attempt}"
