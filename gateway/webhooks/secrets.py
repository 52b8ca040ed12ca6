"""Webhook signing secrets at rest: AES-256-GCM under a key HKDF derives from the master
key for this purpose alone (as gateway/cards.py does for card numbers), the endpoint id
bound as associated data so a ciphertext moved to another endpoint fails to open."""

from __future__ import annotations

import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import core_ext

NONCE_BYTES = 12
SECRET_RANDOM_BYTES = 32  # API.md: whsec_ + base64 of 32 random bytes
PURPOSE = b"kassa webhook secret encryption v1"


class SecretBox:
    def __init__(self, master_key: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PURPOSE).derive(master_key)
        self._aead = AESGCM(key)

    @staticmethod
    def new_secret() -> str:
        return core_ext.webhooks.new_secret(secrets.token_bytes(SECRET_RANDOM_BYTES))

    def seal(self, secret: str, endpoint_id: str) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, secret.encode(), endpoint_id.encode())

    def open(self, blob: bytes, endpoint_id: str) -> str:
        nonce, ciphertext = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, endpoint_id.encode()).decode()
