"""Opaque object ids with a type prefix (API.md): ``pay_``, ``re_``, ``tok_``, ..."""

import secrets

ID_RANDOM_BYTES = 16  # 128 random bits: collisions are not a practical concern


def new_id(prefix: str) -> str:
    # One urandom read as hex: a per-character choice cost ~4% of a worker under load.
    return prefix + "_" + secrets.token_hex(ID_RANDOM_BYTES)
