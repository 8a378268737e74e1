"""Boot-time configuration: `KEEL_*` environment variables, an optional `keel.toml`, defaults.

The configuration is read once and frozen. Secrets are `SecretStr` (or URLs whose password is
masked by `redacted()`), so they never reach logs, errors or `keel config show`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Config", "DependencySettings", "redact_url"]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")

CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


_SECRET_QUERY_KEYS = frozenset(
    {"password", "passwd", "pwd", "sslpassword", "secret", "token", "access_token", "api_key"}
)


def redact_url(url: str) -> str:
    """Return `url` with its password (`user:pw@` or `?password=`) replaced by `***`.

    On http(s) URLs a user name alone (`https://TOKEN@host`) is masked too: there it is how
    tokens are passed, while a database URL's user name is not a secret."""
    parts = urlsplit(url)
    netloc = parts.netloc
    token_as_user = (
        parts.scheme.lower() in {"http", "https"}
        and parts.username is not None
        and not parts.password
    )
    if parts.password is not None or token_as_user:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"***@{host}" if token_as_user else f"{parts.username or ''}:***@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key.lower() in _SECRET_QUERY_KEYS for key, _ in pairs):
            query = urlencode(
                [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs],
                safe="*",
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Timeouts(_Group):
    connect: float | None = Field(default=None, gt=0, le=3600)
    read: float | None = Field(default=None, gt=0, le=3600)
    total: float | None = Field(default=None, gt=0, le=86400)


class _Retry(_Group):
    attempts: int | None = Field(default=None, ge=1, le=100)
    budget: float | None = Field(default=None, gt=0, le=86400)
    base: float | None = Field(default=None, gt=0, le=3600)
    cap: float | None = Field(default=None, gt=0, le=3600)


class _Breaker(_Group):
    failures: int | None = Field(default=None, ge=1, le=100_000)
    window: float | None = Field(default=None, gt=0, le=86400)
    open_for: float | None = Field(default=None, gt=0, le=86400)
    half_open_calls: int | None = Field(default=None, ge=1, le=1000)


class _Bulkhead(_Group):
    limit: int | None = Field(default=None, ge=1, le=100_000)
    wait: float | None = Field(default=None, ge=0, le=3600)


class _Probe(_Group):
    path: str | None = Field(
        default=None, min_length=1, max_length=2000, pattern=r"^(/|https?://)\S*$"
    )
    status: int | None = Field(default=None, ge=100, le=599)
    max_ms: float | None = Field(default=None, gt=0)
    failures: int | None = Field(default=None, ge=1, le=1000)
    recoveries: int | None = Field(default=None, ge=1, le=1000)


class DependencySettings(_Group):
    """One deployment's policy for a dependency (or one of Keel's own components): every
    field left out keeps what code declared (docs/deps.md)."""

    base_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    probe_every: float | None = Field(default=None, ge=1, le=86400)
    timeouts: _Timeouts | None = None
    retry: _Retry | None = None
    breaker: _Breaker | None = None
    concurrency: _Bulkhead | None = None
    probe: _Probe | None = None
    public: bool | None = None
    public_name: str | None = Field(default=None, min_length=1, max_length=100)
    sla_target: float | None = Field(default=None, gt=0, le=100)
    sla_window_days: int | None = Field(default=None, ge=1, le=365)


def _redacted_dependency(settings: DependencySettings) -> dict[str, Any]:
    """A dependency's settings as plain data, its URLs (base URL, an absolute probe path)
    with any password or token masked."""
    data = settings.model_dump(mode="json", exclude_none=True)
    if "base_url" in data:
        data["base_url"] = redact_url(data["base_url"])
    probe = data.get("probe")
    if probe and "path" in probe:
        probe["path"] = redact_url(probe["path"])
    return data


class Config(BaseSettings):
    """Keel's boot-time configuration. Every field is also a `KEEL_<NAME>` variable."""

    model_config = SettingsConfigDict(
        env_prefix="KEEL_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        validate_default=True,
    )

    # --- storage ---------------------------------------------------------------------------
    data_dir: Path = Field(
        default=Path(".keel"),
        description="Directory for the embedded SQLite database and local state.",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the database. Empty means SQLite in the data directory. "
            "PostgreSQL: `postgresql+psycopg://user:password@host:5432/name`."
        ),
    )
    database_pool_size: int = Field(
        default=10, ge=1, le=200, description="Connections per process (PostgreSQL)."
    )
    database_timeout: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description="Seconds to wait for a connection or a SQLite lock before failing.",
    )
    auto_migrate: bool | None = Field(
        default=None,
        description=(
            "Apply migrations at start. Default: yes on SQLite, no on PostgreSQL "
            "(run `keel db upgrade` as a deploy step)."
        ),
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis URL (`redis://host:6379/0`); optional, shared state across processes.",
    )
    changes_poll_interval: float = Field(
        default=1.0,
        ge=0.05,
        le=60.0,
        description=(
            "Seconds between version polls of cached state (settings, registry): the fallback"
            " when a change notice is lost."
        ),
    )

    # --- serving ---------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address `keel serve` binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `keel serve` binds.")
    public_url: str | None = Field(
        default=None,
        description=(
            "The URL users reach Keel at, e.g. `https://ops.example.com`. When https, plain "
            "http requests are redirected and HSTS is sent."
        ),
    )
    shutdown_grace: int = Field(
        default=10, ge=0, le=600, description="Seconds in-flight requests get on shutdown."
    )

    # --- protection ------------------------------------------------------------------------
    allowed_hosts: CommaList = Field(
        default_factory=list,
        description=(
            "Extra Host header values accepted (comma-separated; `*.example.com` allowed). "
            "Localhost names, the bind address and the public URL's host are always accepted."
        ),
    )
    cors_origins: CommaList = Field(
        default_factory=list,
        description="Origins allowed to make cross-origin requests (exact `scheme://host[:port]`).",
    )
    cors_allow_credentials: bool = Field(
        default=False, description="Allow cookies on CORS requests from `cors_origins`."
    )
    trusted_proxies: CommaList = Field(
        default_factory=list,
        description=(
            "Addresses or CIDR ranges of reverse proxies whose `X-Forwarded-For/Proto/Host` "
            "headers are honoured. Empty: forwarded headers are ignored."
        ),
    )
    trust_forwarded_host: bool = Field(
        default=False,
        description=(
            "Take the Host from `X-Forwarded-Host` sent by a trusted proxy. Only enable it when "
            "the proxy always overwrites that header: a client-supplied value would bypass the "
            "Host allowlist."
        ),
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body accepted (413 beyond)."
    )
    max_json_depth: int = Field(
        default=32, ge=2, le=1000, description="Deepest JSON nesting accepted (400 beyond)."
    )

    # --- sessions --------------------------------------------------------------------------
    session_idle_minutes: int = Field(
        default=120, ge=1, le=10080, description="A browser session ends after this much quiet."
    )
    session_max_hours: int = Field(
        default=24, ge=1, le=8760, description="A browser session ends this long after login."
    )

    # --- rate limits ---
    rate_limit_enabled: bool = Field(
        default=True, description="Apply rate limits (docs/rate-limits.md)."
    )
    rate_limit_default: str = Field(
        default="100/minute",
        description=(
            "Requests per caller (principal, else client address) to paths under `/api/`: "
            "`100/minute`, `10 per 5 seconds`, or `unlimited`."
        ),
    )
    rate_limit_login: str = Field(
        default="10/minute",
        description=(
            "Sign-in requests (`POST /api/v1/auth/session`, `…/token`, `…/setup`) per client "
            "address, whoever is signed in."
        ),
    )
    rate_limits: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description=(
            'Per-route limits replacing the default, e.g. `{"POST /api/v1/things": '
            '"10/minute"}`: method optional, a trailing `*` matches a path prefix. JSON in '
            "the environment, a table in keel.toml."
        ),
    )
    rate_limit_tenants: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description=(
            'Per-tenant default limit for each caller of that tenant, e.g. `{"<tenant id>": '
            '"1000/minute"}`.'
        ),
    )

    @staticmethod
    def _rate(value: str, where: str = "") -> str:
        from limits import parse_many

        text = value.strip().lower()
        if text == "unlimited":
            return text
        try:
            items = parse_many(text)
        except ValueError:
            items = []
        if len(items) != 1 or items[0].amount < 1:
            raise ValueError(
                f"{value!r}{where} is not a rate like 100/minute, 10 per 5 seconds or unlimited"
            )
        return text

    @staticmethod
    def _json_table(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        import json

        try:
            return json.loads(value) if value.strip() else {}
        except ValueError:
            raise ValueError('must be a JSON object like {"POST /api/v1/x": "10/minute"}') from None

    @field_validator("rate_limits", "rate_limit_tenants", mode="before")
    @classmethod
    def _rate_tables(cls, value: Any) -> Any:
        return cls._json_table(value)

    @field_validator("rate_limit_default", "rate_limit_login")
    @classmethod
    def _valid_rate(cls, value: str) -> str:
        return cls._rate(value)

    @field_validator("rate_limits")
    @classmethod
    def _valid_route_limits(cls, value: dict[str, str]) -> dict[str, str]:
        routes: dict[str, str] = {}
        for key, rate in value.items():
            method, _, path = key.strip().rpartition(" ")
            method = method.strip().upper()
            if not path.startswith("/") or "*" in path[:-1] or (method and not method.isalpha()):
                raise ValueError(
                    f"{key!r} is not a route like 'POST /api/v1/things', '/api/v1/things' "
                    "or '/api/v1/things/*'"
                )
            if path.rstrip("*") in ("/healthz", "/readyz", "/metrics"):
                raise ValueError(f"{path} is a probe and is never rate limited")
            routes[f"{method} {path}" if method else path] = cls._rate(rate, f" (for {key!r})")
        return routes

    @field_validator("rate_limit_tenants")
    @classmethod
    def _valid_tenant_limits(cls, value: dict[str, str]) -> dict[str, str]:
        return {
            tenant.strip(): cls._rate(rate, f" (for tenant {tenant!r})")
            for tenant, rate in value.items()
        }

    # --- observability ---------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level logged."
    )
    log_format: Literal["auto", "console", "json"] = Field(
        default="auto",
        description="`auto`: readable on a terminal, JSON otherwise.",
    )
    log_file: Path | None = Field(
        default=None, description="Also write JSON log lines to this file, rotated by size."
    )
    log_file_max_bytes: int = Field(
        default=10_485_760, ge=4096, description="Size at which the log file is rotated."
    )
    log_file_backups: int = Field(default=5, ge=0, le=1000, description="Rotated log files kept.")
    access_log: bool = Field(default=True, description="Log one line per HTTP request.")
    metrics_enabled: bool = Field(default=True, description="Serve `/metrics`.")
    docs_enabled: bool = Field(
        default=True, description="Serve the API reference at `/api/v1/docs`."
    )

    # --- tokens ----------------------------------------------------------------------------
    access_token_minutes: int = Field(
        default=15, ge=1, le=1440, description="Lifetime of an access token (JWT)."
    )
    refresh_token_days: int = Field(
        default=30, ge=1, le=90, description="A refresh token expires this long after issue."
    )
    jwt_leeway_seconds: int = Field(
        default=30, ge=0, le=300, description="Clock skew tolerated on `exp`, `nbf` and `iat`."
    )
    jwt_issuer: str | None = Field(
        default=None, description="The tokens' `iss`. Empty: the public URL, else `keel`."
    )
    jwt_audience: str = Field(default="keel", description="The tokens' `aud`.")

    # --- jobs ------------------------------------------------------------------------------
    worker_in_process: bool = Field(
        default=True, description="Run a job worker inside `keel serve` (`--no-worker`: off)."
    )
    worker_queues: CommaList = Field(
        default_factory=lambda: ["default"], description="Queues the in-process worker serves."
    )
    worker_concurrency: int = Field(
        default=10, ge=1, le=1000, description="Jobs one worker runs at once."
    )
    worker_claim_batch: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description=(
            "Most jobs one claim takes (default: the concurrency). Smaller batches with a"
            " larger concurrency keep claiming while jobs run and spread a backlog across"
            " workers."
        ),
    )
    job_lease_seconds: float = Field(
        default=30.0,
        ge=1.0,
        le=3600.0,
        description="A claimed job's lease; a dead worker's job is rescued after it.",
    )

    job_retention_completed_hours: float = Field(
        default=24.0, ge=0.0, description="Completed jobs are deleted after this long."
    )
    job_retention_failed_days: float = Field(
        default=7.0,
        ge=0.0,
        description="Discarded and cancelled jobs are deleted after this long.",
    )

    # --- dependencies ----------------------------------------------------------------------
    deps: dict[str, DependencySettings] = Field(
        default_factory=dict,
        description=(
            "Per-deployment policy of dependencies and Keel's own components, by name: "
            "`KEEL_DEPS__<NAME>__<FIELD>` (groups nest with `__`: "
            "`KEEL_DEPS__TOPMEDIAI__TIMEOUTS__READ=10`) or `[deps.<name>]` in keel.toml. "
            "Fields: base_url, probe_every, timeouts, retry, breaker, concurrency, probe, "
            "public, public_name, sla_target, sla_window_days (docs/deps.md)."
        ),
    )

    @field_validator("deps", mode="before")
    @classmethod
    def _dependency_names(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        named: dict[str, Any] = {}
        for name, settings in value.items():
            key = re.sub(r"[^a-z0-9]", "_", str(name).strip().lower())
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", key):
                raise ValueError(f"{name!r} is not a dependency name")
            named[key] = settings
        return named

    # --- audit -----------------------------------------------------------------------------
    audit_retention_days: int | None = Field(
        default=None,
        ge=1,
        le=36500,
        description="Age after which `keel audit prune` archives and deletes events. Empty: "
        "keep forever (prune only with an explicit --before).",
    )

    # --- secrets ---------------------------------------------------------------------------
    master_key: SecretStr | None = Field(
        default=None,
        description=(
            "Master key (32 bytes, base64url) wrapping the data keys. Empty: "
            "`<data_dir>/master.key`, created 0600 on SQLite; required on PostgreSQL."
        ),
    )

    @field_validator(
        "allowed_hosts", "cors_origins", "trusted_proxies", "worker_queues", mode="before"
    )
    @classmethod
    def _comma_lists(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard_origin(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin == "*" or "*" in origin:
                raise ValueError("wildcard origins are not allowed; list each origin explicitly")
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com")
        return [origin.rstrip("/").lower() for origin in value]

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR range") from None
        return value

    @field_validator("public_url")
    @classmethod
    def _valid_public_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL, e.g. https://ops.example.com")
        return value.rstrip("/")

    @field_validator("database_url", "redis_url")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _known_database(self) -> Config:
        scheme = urlsplit(self.effective_database_url).scheme
        if scheme not in ("sqlite+aiosqlite", "postgresql+psycopg"):
            raise ValueError(
                f"database_url scheme {scheme!r} is not supported; use sqlite+aiosqlite:// "
                "or postgresql+psycopg://"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments > environment > `keel.toml` (or `$KEEL_CONFIG_FILE`) > defaults."""
        toml_path = Path(os.environ.get("KEEL_CONFIG_FILE", "keel.toml"))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )

    # --- derived values --------------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        """The database URL in use: the configured one, or SQLite in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'keel.db').as_posix()}"

    @property
    def dialect(self) -> Literal["sqlite", "postgresql"]:
        """The database dialect name."""
        return "sqlite" if self.effective_database_url.startswith("sqlite") else "postgresql"

    @property
    def should_auto_migrate(self) -> bool:
        """Whether migrations run at start (explicit setting, else SQLite only)."""
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.dialect == "sqlite"

    @property
    def token_issuer(self) -> str:
        """The `iss` of access tokens."""
        return self.jwt_issuer or (self.public_url.rstrip("/") if self.public_url else "keel")

    @property
    def is_https(self) -> bool:
        """Whether the public URL is https (turns on redirects and HSTS)."""
        return bool(self.public_url and self.public_url.startswith("https://"))

    @property
    def bind_is_loopback(self) -> bool:
        """Whether `host` only accepts connections from this machine."""
        if self.host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # URLs may carry passwords; a repr can end up in a traceback or a log line.
        for name, value in super().__repr_args__():
            if name in ("database_url", "redis_url") and isinstance(value, str):
                yield name, redact_url(value)
            elif name == "deps":
                yield name, self.redacted()["deps"]
            else:
                yield name, value

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data with every secret masked."""
        data = self.model_dump(mode="json")
        for name, field in type(self).model_fields.items():
            if field.annotation is not None and "SecretStr" in str(field.annotation):
                data[name] = "***" if getattr(self, name) is not None else None
        data["database_url"] = redact_url(self.effective_database_url)
        if self.redis_url:
            data["redis_url"] = redact_url(self.redis_url)
        data["deps"] = {
            name: _redacted_dependency(settings) for name, settings in self.deps.items()
        }
        return data
