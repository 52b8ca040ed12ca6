"""Card data at rest: AES-256-GCM for token numbers, keyed fingerprints for matching.

One master key (``KASSA_MASTER_KEY``, base64 of 32 bytes, or generated once into
the data directory) is expanded with HKDF into independent keys per purpose,
so the encryption key never doubles as the fingerprint key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger("kassa.cards")

MASTER_KEY_BYTES = 32
NONCE_BYTES = 12
MASTER_KEY_FILE = "master.key"


class MasterKeyError(RuntimeError):
    pass


def _derive(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master)


def _decode_master_key(text: str, source: str) -> bytes:
    # The message names where the key came from, never the key itself.
    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise MasterKeyError(f"{source} is not valid base64") from None
    if len(key) != MASTER_KEY_BYTES:
        raise MasterKeyError(f"{source} must decode to {MASTER_KEY_BYTES} bytes, not {len(key)}")
    return key


def load_master_key(configured: str, data_dir: Path) -> bytes:
    if configured:
        return _decode_master_key(configured, "KASSA_MASTER_KEY")
    path = data_dir / MASTER_KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        encoded = base64.b64encode(secrets.token_bytes(MASTER_KEY_BYTES))
        # O_EXCL: two processes starting at once must not write two different keys.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(encoded)
            log.warning(
                "generated a new master key in %s: back it up, or set KASSA_MASTER_KEY; "
                "tokens cannot be decrypted without it",
                path,
            )
    return _decode_master_key(
        path.read_text().strip(), f"the master key file {path} (used as KASSA_MASTER_KEY is empty)"
    )


class CardVault:
    def __init__(self, master_key: bytes) -> None:
        self._aead = AESGCM(_derive(master_key, b"kassa card number encryption v1"))
        self._fingerprint_key = _derive(master_key, b"kassa card fingerprint v1")

    def encrypt_number(self, number: str, token_id: str) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        # The token id is bound as associated data: a ciphertext moved to another row fails.
        return nonce + self._aead.encrypt(nonce, number.encode(), token_id.encode())

    def decrypt_number(self, blob: bytes, token_id: str) -> str:
        nonce, ciphertext = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, token_id.encode()).decode()

    def fingerprint(self, merchant_id: str, number: str) -> str:
        """Same card, same merchant: same fingerprint; across merchants they differ."""
        mac = hmac.new(self._fingerprint_key, digestmod=hashlib.sha256)
        mac.update(merchant_id.encode() + b"\x00" + number.encode())
        return mac.hexdigest()[:32]
