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


def test_webhook_defaults_are_api_mds():
    settings = load_settings({})
    assert settings.webhook_allow_private is False
    assert settings.webhook_retry_schedule_s == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert settings.webhook_timeout_s == 15
    assert (settings.webhook_concurrency, settings.webhook_endpoint_concurrency) == (64, 8)
    assert settings.webhook_disable_after_s == 5 * 86_400


def test_webhook_settings_from_the_environment():
    settings = load_settings(
        {
            "KASSA_WEBHOOK_ALLOW_PRIVATE": "1",
            "KASSA_WEBHOOK_RETRY_SCHEDULE_S": "1, 2,3",
            "KASSA_WEBHOOK_TIMEOUT_S": "2",
            "KASSA_WEBHOOK_CONCURRENCY": "4",
            "KASSA_WEBHOOK_ENDPOINT_CONCURRENCY": "4",
            "KASSA_WEBHOOK_DISABLE_AFTER_S": "60",
        }
    )
    assert settings.webhook_allow_private is True
    assert settings.webhook_retry_schedule_s == (1, 2, 3)
    assert (settings.webhook_timeout_s, settings.webhook_disable_after_s) == (2, 60)
    assert (settings.webhook_concurrency, settings.webhook_endpoint_concurrency) == (4, 4)


def test_bad_webhook_settings_are_named_at_once():
    with pytest.raises(ConfigError) as info:
        load_settings(
            {
                "KASSA_WEBHOOK_ALLOW_PRIVATE": "sometimes",
                "KASSA_WEBHOOK_RETRY_SCHEDULE_S": "5,soon,300",
                "KASSA_WEBHOOK_TIMEOUT_S": "0",
                "KASSA_WEBHOOK_CONCURRENCY": "lots",
                "KASSA_WEBHOOK_DISABLE_AFTER_S": "-1",
            }
        )
    message = str(info.value)
    assert "KASSA_WEBHOOK_ALLOW_PRIVATE='sometimes': must be one of 1, 0, true" in message
    assert (
        "KASSA_WEBHOOK_RETRY_SCHEDULE_S='5,soon,300': delay 2 ('soon') is not a positive "
        "integer of seconds"
    ) in message
    assert "KASSA_WEBHOOK_TIMEOUT_S='0': must be an integer from 1 to 300" in message
    assert "KASSA_WEBHOOK_CONCURRENCY='lots': must be an integer from 1 to 10000" in message
    assert "KASSA_WEBHOOK_DISABLE_AFTER_S='-1': must be an integer from 1 to 2592000" in message


def test_an_empty_retry_schedule_is_refused():
    with pytest.raises(ConfigError, match=r"KASSA_WEBHOOK_RETRY_SCHEDULE_S='': must be comma"):
        load_settings({"KASSA_WEBHOOK_RETRY_SCHEDULE_S": ""})


def test_webhook_concurrency_bounds_are_consistent():
    with pytest.raises(ConfigError, match="KASSA_WEBHOOK_ENDPOINT_CONCURRENCY must not exceed"):
        load_settings({"KASSA_WEBHOOK_CONCURRENCY": "4", "KASSA_WEBHOOK_ENDPOINT_CONCURRENCY": "8"})
