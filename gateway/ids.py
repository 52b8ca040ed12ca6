"""Opaque object ids with a type prefix (API.md): ``pay_``, ``re_``, ``tok_``, ..."""

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
ID_RANDOM_CHARS = 24  # 62**24 ~ 2**143: collisions are not a practical concern


def new_id(prefix: str) -> str:
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(ID_RANDOM_CHARS))
