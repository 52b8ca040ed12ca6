"""Opaque object ids with a type prefix (API.md): ``pay_``, ``re_``, ``tok_``, ..."""

import hashlib
import re
import secrets

ID_RANDOM_BYTES = 16  # 128 random bits: collisions are not a practical concern
# Exactly what new_id and keyed_id issue: a lower-case prefix, "_", the hex digits.
ISSUED_ID = re.compile(rf"[a-z]{{2,3}}_[0-9a-f]{{{2 * ID_RANDOM_BYTES}}}")


def new_id(prefix: str) -> str:
    # One urandom read as hex: a per-character choice cost ~4% of a worker under load.
    return prefix + "_" + secrets.token_hex(ID_RANDOM_BYTES)


def keyed_id(prefix: str, merchant_id: str, idempotency_key: str) -> str:
    """The same id for every attempt of one (merchant, Idempotency-Key): what a processor
    deduplicates a retried operation by. Same shape as ``new_id``'s ids."""
    digest = hashlib.sha256(f"{merchant_id}\x00{idempotency_key}".encode()).hexdigest()
    return prefix + "_" + digest[: 2 * ID_RANDOM_BYTES]
