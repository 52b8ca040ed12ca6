import pytest

from gateway.config import ConfigError, load_settings


def test_defaults_are_valid(tmp_path):
    settings = load_settings({"KASSA_DATA_DIR": str(tmp_path)})
    assert settings.port == 8080
    assert settings.workers == 1
    assert settings.database_url is None
    assert settings.data_dir == tmp_path


def test_flags_override_environment():
    settings = load_settings({"KASSA_PORT": "9000"}, {"port": "9100", "workers": "3"})
    assert (settings.port, settings.workers) == (9100, 3)


def test_every_bad_value_is_named_at_once():
    with pytest.raises(ConfigError) as info:
        load_settings({"KASSA_PORT": "http", "KASSA_WORKERS": "0", "DATABASE_URL": "mysql://x"})
    message = str(info.value)
    assert "KASSA_PORT='http': must be an integer from 1 to 65535" in message
    assert "KASSA_WORKERS='0': must be an integer from 1 to 64" in message
    # The URL may hold a password: it is never echoed.
    assert "DATABASE_URL=<hidden>: must be a postgresql:// URL" in message
    assert "mysql" not in message


def test_pool_bounds_are_consistent():
    with pytest.raises(ConfigError, match="KASSA_DB_POOL_MIN must not exceed"):
        load_settings({"KASSA_DB_POOL_MIN": "9", "KASSA_DB_POOL_MAX": "3"})


def test_booleans_are_strict():
    with pytest.raises(ConfigError, match="KASSA_ALLOW_PURE_CORE='maybe'"):
        load_settings({"KASSA_ALLOW_PURE_CORE": "maybe"})


def test_recovery_waits_longer_than_a_processor_call():
    with pytest.raises(ConfigError, match="KASSA_RECOVERY_AFTER_S must be longer"):
        load_settings({"KASSA_RECOVERY_AFTER_S": "2", "KASSA_PROCESSOR_TIMEOUT_MS": "3000"})
