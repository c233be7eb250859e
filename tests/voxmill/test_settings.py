"""Settings: one source of defaults, and a key that crosses process boundaries as its recipe, never its value."""

from __future__ import annotations

import pickle

import pytest

from voxmill.errors import ConfigError
from voxmill.settings import ApiKey, RetryPolicy, Settings

SECRET = "sk-settings-test-0123456789"


def test_from_env_defaults_are_the_value_objects_defaults():
    assert Settings.from_env({}) == Settings()
    custom = Settings.from_env({"VOXMILL_CONCURRENCY": "9", "VOXMILL_MAX_ATTEMPTS": "2", "VOXMILL_TIMEOUT": "5"})
    assert (custom.rate_limit.max_concurrent, custom.retry.max_attempts, custom.timeouts.read) == (9, 2, 5.0)
    with pytest.raises(ConfigError, match="VOXMILL_RPS"):
        Settings.from_env({"VOXMILL_RPS": "fast"})
    assert Settings.from_env({"VOXMILL_RATE_LIMITED_DEADLINE": "30"}).retry.rate_limited_deadline == 30.0
    assert Settings.from_env({}).retry.rate_limited_deadline == RetryPolicy().rate_limited_deadline


def test_env_key_pickles_as_the_variable_name(monkeypatch):
    monkeypatch.setenv("VOXMILL_API_KEY", SECRET)
    settings = Settings.from_env()
    payload = pickle.dumps(settings)
    assert SECRET.encode() not in payload and b"VOXMILL_API_KEY" in payload
    assert pickle.loads(payload).api_key.reveal() == SECRET  # re-read where it is unpickled
    monkeypatch.delenv("VOXMILL_API_KEY")
    with pytest.raises(ConfigError, match="VOXMILL_API_KEY is not set"):
        pickle.loads(payload)


def test_key_without_recipe_refuses_pickling_and_local_token_travels():
    with pytest.raises(TypeError, match="Secret block"):
        pickle.dumps(ApiKey(SECRET))
    token = ApiKey.for_local_server("loopback-token")
    assert pickle.loads(pickle.dumps(token)) == token
    assert "loopback" not in repr(token)


def test_secret_block_key_is_saved_by_the_cli_and_pickles_as_the_block_name(prefect_api, monkeypatch):
    from tasks.settings import key_from_block, resolve_settings
    from voxmill.cli import main
    from voxmill.options import RunOptions

    monkeypatch.setenv("VOXMILL_API_KEY", SECRET)
    assert main(["secret", "--name", "voxmill-test-key"]) == 0
    monkeypatch.delenv("VOXMILL_API_KEY")
    settings = resolve_settings(RunOptions(api_key_block="voxmill-test-key"))
    assert settings.api_key.reveal() == SECRET
    payload = pickle.dumps(settings)
    assert SECRET.encode() not in payload and b"voxmill-test-key" in payload
    assert pickle.loads(payload).api_key == settings.api_key
    assert key_from_block("voxmill-no-such-block") is None  # a flow then falls back to a local server
