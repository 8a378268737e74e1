"""Configuration: environment, keel.toml, validation and redaction."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from keel import Config
from keel.core.config import redact_url


def test_defaults_are_local_and_safe() -> None:
    """By default Keel binds loopback and uses SQLite in ./.keel."""
    config = Config()
    assert config.host == "127.0.0.1"
    assert config.bind_is_loopback
    assert config.dialect == "sqlite"
    assert config.effective_database_url == "sqlite+aiosqlite:///.keel/keel.db"
    assert config.should_auto_migrate
    assert not config.is_https


def test_environment_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    """List settings read `a, b` from the environment."""
    monkeypatch.setenv("KEEL_ALLOWED_HOSTS", "ops.example, *.internal")
    monkeypatch.setenv("KEEL_TRUSTED_PROXIES", "10.0.0.0/8,::1")
    config = Config()
    assert config.allowed_hosts == ["ops.example", "*.internal"]
    assert config.trusted_proxies == ["10.0.0.0/8", "::1"]


def test_toml_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """keel.toml supplies values; the environment overrides them."""
    toml = tmp_path / "keel.toml"
    toml.write_text('port = 9001\nlog_level = "debug"\n')
    monkeypatch.setenv("KEEL_CONFIG_FILE", str(toml))
    monkeypatch.setenv("KEEL_PORT", "9002")
    config = Config()
    assert config.log_level == "debug"
    assert config.port == 9002


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("database_url", "mysql://x/y", "not supported"),
        ("trusted_proxies", "not-an-ip", "CIDR"),
        ("public_url", "ops.example", "absolute"),
        ("cors_origins", "https://a.example/path", "not an origin"),
        ("port", "70000", "less than or equal"),
    ],
)
def test_invalid_values_are_refused(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str, message: str
) -> None:
    """Bad configuration fails at load with a message naming the problem."""
    monkeypatch.setenv(f"KEEL_{field.upper()}", value)
    with pytest.raises(ValidationError, match=message):
        Config()


def test_unknown_toml_keys_are_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A typo in keel.toml is an error, not silently ignored."""
    toml = tmp_path / "keel.toml"
    toml.write_text("prot = 1\n")
    monkeypatch.setenv("KEEL_CONFIG_FILE", str(toml))
    with pytest.raises(ValidationError, match="prot"):
        Config()


def test_secrets_are_redacted() -> None:
    """Passwords in URLs and secret fields never appear in the redacted view."""
    config = Config(
        database_url="postgresql+psycopg://keel:s3cret@db.internal:5432/keel",
        redis_url="redis://:r3dis@cache:6379/0",
        master_key="m4ster",
    )
    shown = str(config.redacted())
    for secret in ("s3cret", "r3dis", "m4ster"):
        assert secret not in shown
    assert "db.internal:5432" in shown
    assert "s3cret" not in repr(config)
    assert redact_url("https://user:pw@[::1]:8/x") == "https://user:***@[::1]:8/x"


def test_a_token_passed_as_an_http_user_name_is_redacted() -> None:
    """`https://TOKEN@host` hides the token; a database URL keeps its (non-secret) user."""
    assert redact_url("https://ghp_t0ken@api.example.com:8443/v1") == (
        "https://***@api.example.com:8443/v1"
    )
    assert "ghp_t0ken" not in redact_url("http://ghp_t0ken:@api.example.com/")
    assert redact_url("postgresql+psycopg://keel@db/keel") == "postgresql+psycopg://keel@db/keel"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://keel@db/keel?password=s3cret&sslmode=require",
        "redis://cache:6379/0?password=s3cret",
        "postgresql+psycopg://keel:s3cret@db/keel?sslpassword=s3cret",
    ],
)
def test_query_string_passwords_are_redacted(url: str) -> None:
    """Passwords passed as query parameters are masked everywhere a URL is shown."""
    from keel.core.database import Database

    assert "s3cret" not in redact_url(url)
    if url.startswith("postgresql"):
        config = Config(database_url=url)
        assert "s3cret" not in repr(config)
        assert "s3cret" not in str(config.redacted())
        assert "s3cret" not in Database(config).display_url
        assert "sslmode=require" in redact_url(url) or "sslpassword" in url


def test_config_is_frozen() -> None:
    """Boot-time configuration cannot change while running."""
    config = Config()
    with pytest.raises(ValidationError):
        config.port = 1  # type: ignore[misc]
