"""The card vault: keys from the environment or generated once, encryption bound to its row."""

import base64
import hashlib
import re
import stat

import pytest
from cryptography.exceptions import InvalidTag

from gateway.cards import MASTER_KEY_FILE, CardVault, MasterKeyError, load_master_key


def test_generated_once_private_and_reused(tmp_path, caplog):
    first = load_master_key("", tmp_path)
    path = tmp_path / MASTER_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "generated a new master key" in caplog.text
    assert load_master_key("", tmp_path) == first
    assert len(first) == 32


def test_environment_key_wins_and_is_checked(tmp_path):
    key = bytes(range(32))
    assert load_master_key(base64.b64encode(key).decode(), tmp_path) == key
    assert not (tmp_path / MASTER_KEY_FILE).exists()
    with pytest.raises(MasterKeyError, match="32 bytes"):
        load_master_key(base64.b64encode(b"short").decode(), tmp_path)
    with pytest.raises(MasterKeyError, match="base64"):
        load_master_key("not base64!", tmp_path)


def test_ciphertext_is_bound_to_its_token():
    vault = CardVault(bytes(32))
    blob = vault.encrypt_number("4242424242424242", "tok_a")
    assert b"4242424242424242" not in blob
    assert vault.decrypt_number(blob, "tok_a") == "4242424242424242"
    with pytest.raises(InvalidTag):
        vault.decrypt_number(blob, "tok_b")
    with pytest.raises(InvalidTag):
        CardVault(bytes([1]) * 32).decrypt_number(blob, "tok_a")


def test_fingerprints_are_keyed_and_per_merchant():
    vault, other = CardVault(bytes(32)), CardVault(bytes([1]) * 32)
    same = vault.fingerprint("mer_a", "4242424242424242")
    assert same == vault.fingerprint("mer_a", "4242424242424242")
    assert same != vault.fingerprint("mer_b", "4242424242424242")
    assert same != other.fingerprint("mer_a", "4242424242424242")
    assert same != vault.fingerprint("mer_a", "5555555555554444")
    # 32 hex characters that carry nothing of the number: not it, not its last 12 digits,
    # not an unkeyed hash anyone could compute from it.
    assert re.fullmatch(r"[0-9a-f]{32}", same)
    assert "4242424242424242" not in same and "424242424242" not in same
    assert same != hashlib.sha256(b"4242424242424242").hexdigest()[:32]
