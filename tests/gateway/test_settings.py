"""Settings: environment beats file beats default; bad values are clear errors; all documented."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import Secret, Settings, describe_settings, load_settings, parse_duration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_load() -> None:
    settings = load_settings(environ={})
    assert settings.server.http_port == 8080
    assert settings.server.sftp_port == 2222
    assert settings.server.http_host == "127.0.0.1"
    assert settings.security.session_ttl == timedelta(hours=12)


def test_file_overrides_default_and_env_overrides_file(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text("[server]\nhttp_port = 9000\nsftp_port = 9001\n")
    settings = load_settings(config, environ={"TELGATE_SERVER_HTTP_PORT": "9100"})
    assert settings.server.http_port == 9100
    assert settings.server.sftp_port == 9001


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"TELGATE_SERVER_HTTP_PORT": "eighty"}, "server.http_port"),
        ({"TELGATE_SERVER_HTTP_PORT": "70000"}, "server.http_port"),
        ({"TELGATE_SECURITY_SESSION_TTL": "forever"}, "security.session_ttl"),
        ({"TELGATE_INGEST_DEFAULT_TIMEZONE": "Mars/Olympus"}, "ingest.default_timezone"),
        ({"TELGATE_INGEST_DEFAULT_COUNTRY": "GBR"}, "ingest.default_country"),
        ({"TELGATE_METADATA_URL": "mysql://x"}, "metadata.url"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_settings(environ=env)


def test_unknown_section_or_key_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text("[server]\nhttp_prot = 1\n")
    with pytest.raises(ConfigError, match="http_prot"):
        load_settings(config, environ={})
    config.write_text("[nonsense]\nx = 1\n")
    with pytest.raises(ConfigError, match="nonsense"):
        load_settings(config, environ={})


def test_secret_is_redacted() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert secret.reveal() == "hunter2"


def test_durations() -> None:
    assert parse_duration("72h") == timedelta(hours=72)
    assert parse_duration("15m") == timedelta(minutes=15)
    with pytest.raises(ValueError, match="duration"):
        parse_duration("3 fortnights")


def test_every_setting_is_documented() -> None:
    text = DOCS.read_text()
    for name, _, _ in describe_settings(Settings()):
        assert f"`{name}`" in text, f"{name} is missing from docs/configuration.md"


def test_settings_are_frozen() -> None:
    settings = load_settings(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.http_port = 1  # type: ignore[misc]


def test_every_error_code_is_documented() -> None:
    from gateway.errors import ERROR_TABLE

    text = (DOCS.parent / "errors.md").read_text()
    for code in ERROR_TABLE:
        assert f"`{code}`" in text, f"error code {code} is missing from docs/errors.md"
