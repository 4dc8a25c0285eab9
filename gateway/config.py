"""gateway.toml -> typed settings.

The file is read with tomllib, every string may be written as ``"${NAME}"`` to read the environment,
relative paths are resolved against the folder that holds the file, and every error names the file and
the key path (``gateway.toml: api_keys[1].key: field required``).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """A config problem, already phrased for a one-line message: ``file: key: problem``."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1_048_576, gt=0, description="larger request bodies answer 413")
    public_url: str | None = None
    # Slow clients: seconds to send a request's line and headers (also how long an idle keep-alive
    # connection stays open), seconds to send its body, and connections open at once.
    header_timeout: float = Field(15.0, gt=0)
    body_timeout: float = Field(60.0, gt=0)
    max_connections: int = Field(1000, ge=1)


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class StorageConfig(Section):
    """``path``: the embedded SQLite file (the default). ``url``: a PostgreSQL database shared by
    any number of gateway processes. Only one of the two may be given."""

    path: Path = Path("gateway.db")
    # A push that can't be stored within this many seconds (disk full, database locked by another
    # process, read-only) answers 503 with Retry-After; also how long a write waits for a lock.
    write_timeout: float = Field(5.0, gt=0, le=60)
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(POSTGRES_SCHEMES):
            raise ValueError("must be a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _one_store(self) -> StorageConfig:
        if self.url is not None and "path" in self.model_fields_set:
            raise ValueError("give either path (SQLite) or url (PostgreSQL), not both")
        return self

    @property
    def is_postgres(self) -> bool:
        return self.url is not None

    def describe(self) -> str:
        """Where the store is, safe to log: a URL's password is masked."""
        return redact_url(self.url) if self.url is not None else str(self.path)


# Query parameters of a libpq URL that carry a secret (``?password=...`` is as valid as
# ``user:password@``).
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def redact_url(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``, and
    ``?password=secret`` -> ``?password=***``."""
    parts = urlsplit(url)
    query = "&".join(
        f"{pair.partition('=')[0]}=***"
        if unquote(pair.partition("=")[0]).lower() in SECRET_PARAMETERS
        else pair
        for pair in parts.query.split("&")
    )
    if parts.password is None and query == parts.query:
        return url  # nothing to hide: as written (urlunsplit may respell a URL)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[1]}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class PluginsConfig(Section):
    # Optional: a folder of drop-in plugins, added to the built-in sources.
    dir: Path | None = None


class TemplatesConfig(Section):
    # Optional: a folder of templates overriding the built-in ones by file name.
    dir: Path | None = None


DEFAULT_RETRY_SCHEDULE: list[float] = [5, 300, 1800, 7200, 18000, 36000, 36000]


class DeliveryConfig(Section):
    allow_private_targets: bool = False
    retry_schedule: list[float] = Field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE))
    connect_timeout: float = Field(5.0, gt=0)
    timeout: float = Field(15.0, gt=0)
    concurrency: int = Field(128, ge=1)
    per_subscriber_concurrency: int = Field(16, ge=1)
    # Deliveries (and /test sends) in flight at once for one tenant's subscriptions together.
    per_tenant_concurrency: int = Field(64, ge=1)
    retention_days: float = Field(7.0, gt=0)
    disable_after_hours: float = Field(120.0, gt=0)
    ordering_max_wait: float = Field(3600.0, gt=0)
    poll_interval: float = Field(1.0, gt=0)
    shutdown_grace: float = Field(10.0, ge=0)

    @field_validator("retry_schedule")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("delays must be >= 0 seconds")
        return value


class RetentionConfig(Section):
    """How long what the gateway keeps is kept (docs/data.md). Messages, their attempts and the
    events they were rendered from follow ``delivery.retention_days``."""

    # Processed pushes, raw bodies and all, are deleted this long after they were processed.
    pushes_days: float = Field(7.0, gt=0)
    # A failed push is kept this long for a replay (``gateway replay-pushes``).
    failed_pushes_days: float = Field(30.0, gt=0)
    # A booking's last state (for uuids, diffs, order and reconciliation reads) and room map, and
    # a day's availability, are kept this long after the stay (the day) ended.
    state_days_after_stay: float = Field(30.0, ge=0)
    # Seconds between maintenance rounds.
    interval: float = Field(3600.0, gt=0)


class IngestConfig(Section):
    concurrency: int = Field(32, ge=1, description="pushes processed at once")
    lease_seconds: float = Field(120.0, gt=0, description="a push held longer is taken over")
    retry_base: float = Field(5.0, gt=0, description="first delay after a PMS API failure")
    retry_max: float = Field(600.0, gt=0, description="longest delay between retries")
    max_attempts: int = Field(50, ge=1, description="then the push is failed (replayable)")
    poll_interval: float = Field(1.0, gt=0)


class ApiKey(Section):
    name: str = Field(min_length=1)
    key: str = Field(min_length=8)
    products: list[str] = Field(default_factory=lambda: ["*"])
    admin: bool = False
    # Live subscriptions this key (tenant) may hold; one more answers 400. Each subscription costs
    # a delivery row per matching event, so the cap bounds what one tenant can make the gateway do.
    max_subscriptions: int = Field(100, ge=1)


class SourceConfig(BaseModel):
    """Settings common to every ingest source; a source plugin reads its own extra keys."""

    model_config = ConfigDict(extra="allow")

    token: str = Field(min_length=1)
    api_url: str | None = None


class SupplierConfig(Section):
    id: str = "octo-gateway"
    name: str = "OCTO Gateway"
    email: str | None = None
    telephone: str | None = None
    website: str | None = None
    address: str | None = None
    endpoint: str | None = None  # default: server.public_url (or the listening address) + /octo


class SandboxConfig(Section):
    enabled: bool = False


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class GatewayConfig(Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    templates: TemplatesConfig = Field(default_factory=TemplatesConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    api_keys: list[ApiKey] = Field(default_factory=list)
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    supplier: SupplierConfig = Field(default_factory=SupplierConfig)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    # The config file as it was given (messages name it so); relative paths in it were resolved
    # against its folder.
    source_file: Path | None = Field(default=None, exclude=True)

    @field_validator("api_keys")
    @classmethod
    def _unique_keys(cls, keys: list[ApiKey]) -> list[ApiKey]:
        seen: set[str] = set()
        for key in keys:
            if key.key in seen:
                raise ValueError(f"two api keys share the key of {key.name!r}")
            seen.add(key.key)
        return keys


def default_config_path() -> Path:
    return Path(os.environ.get("GATEWAY_CONFIG") or "gateway.toml")


def load_config(path: Path | str | None = None) -> GatewayConfig:
    """Read, substitute, validate and resolve a config file; raises ConfigError."""
    file = Path(path) if path is not None else default_config_path()
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    return config_from_dict(raw, file)


def config_from_dict(raw: dict[str, Any], file: Path) -> GatewayConfig:
    substituted = _substitute(raw, file, ())
    try:
        config = GatewayConfig.model_validate(substituted)
    except ValidationError as exc:
        raise ConfigError(_describe(file, exc)) from None
    config.source_file = file
    _resolve_paths(config, file.resolve().parent)
    return config


def _substitute(value: Any, file: Path, path: tuple[str | int, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, file, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, file, (*path, i)) for i, v in enumerate(value)]
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(
                    f"{file}: {key_path(path)}: environment variable {name} is not set"
                )
            return os.environ[name]

        return ENV_PATTERN.sub(lookup, value)
    return value


def key_path(loc: tuple[str | int, ...]) -> str:
    """('api_keys', 1, 'key') -> 'api_keys[1].key'."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _describe(file: Path, exc: ValidationError) -> str:
    return f"{file}: " + describe_errors(exc)


def describe_errors(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> str:
    """``api_keys[1].key: field required; server.port: ...`` for every problem pydantic found."""
    problems = []
    for error in exc.errors():
        message = error["msg"]
        if error["type"] == "missing":
            message = "field required"
        elif error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        problems.append(f"{key_path((*prefix, *error['loc']))}: {message}")
    return "; ".join(problems)


def _resolve_paths(config: GatewayConfig, base: Path) -> None:
    def resolve(path: Path) -> Path:
        return (base / path).resolve()

    if str(config.storage.path) != ":memory:":
        config.storage.path = resolve(config.storage.path)
    if config.plugins.dir is not None:
        config.plugins.dir = resolve(config.plugins.dir)
    if config.templates.dir is not None:
        config.templates.dir = resolve(config.templates.dir)
