"""Typed, frozen settings: environment beats file beats the embedded default.

Sources, lowest precedence first:

1. ``config/telgate.toml`` shipped with the code (every setting has a default there);
2. the file given by ``--config`` / ``TELGATE_CONFIG`` (same sections, any subset);
3. environment variables ``TELGATE_<SECTION>_<KEY>`` (e.g. ``TELGATE_SERVER_HTTP_PORT=9090``).

Every setting is one field below with its help text; ``docs/configuration.md`` lists them all (a test
keeps the two in step). A bad value raises ``ConfigError`` naming the setting, which the CLI turns
into exit code 78. Secrets are ``Secret`` values that print as ``**********``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, get_type_hints
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.errors import ConfigError

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "telgate.toml"
ENV_PREFIX = "TELGATE_"


class Secret:
    """A setting that must never be printed or logged."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value, for the one place that needs it."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "**********" if self._value else ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServerSettings:
    """Where the gateway listens and keeps its data."""

    data_dir: Path = _setting(Path("var"), "Directory for keys, SQLite, lake and vault (created 0700).")
    http_host: str = _setting("127.0.0.1", "Address the HTTP ingest/admin API binds to.")
    http_port: int = _setting(8080, "Port of the HTTP API (0 picks a free port).")
    http_workers: int = _setting(
        0, "HTTP worker processes sharing the port (SO_REUSEPORT); 0 serves HTTP in the main process."
    )
    sftp_host: str = _setting("127.0.0.1", "Address the SFTP release server binds to.")
    sftp_port: int = _setting(2222, "Port of the SFTP release server (0 picks a free port).")
    public_host: str = _setting("127.0.0.1", "Host name printed in release credentials for customers.")
    tls_cert: str = _setting("", "PEM certificate for HTTPS; empty serves plain HTTP (loopback only).")
    tls_key: str = _setting("", "PEM private key for HTTPS.")


@dataclass(frozen=True)
class MetadataSettings:
    """The metadata store: operators, tokens, audit, staging, key rows, releases."""

    url: str = _setting("", "Store URL: sqlite:///PATH or postgresql://...; empty = SQLite in data_dir.")


@dataclass(frozen=True)
class SecuritySettings:
    """Operator authentication and lock-out."""

    session_ttl: timedelta = _setting(timedelta(hours=12), "Lifetime of an operator session token.")
    login_max_failures: int = _setting(5, "Failed logins from one address before it is locked out.")
    login_failure_window: timedelta = _setting(timedelta(minutes=15), "Window in which failures count.")
    login_ban: timedelta = _setting(timedelta(minutes=15), "How long a locked-out address stays banned.")
    argon2_time_cost: int = _setting(3, "argon2id iterations for password hashes.")
    argon2_memory_kib: int = _setting(65536, "argon2id memory cost in KiB.")
    argon2_parallelism: int = _setting(1, "argon2id lanes.")


@dataclass(frozen=True)
class IngestSettings:
    """PBX ingest defaults and limits."""

    default_country: str = _setting("GB", "ISO 3166 country for numbers when a PBX sets none.")
    default_timezone: str = _setting("Europe/London", "IANA zone for PBX local times when a PBX sets none.")
    max_body_bytes: int = _setting(64 * 1024 * 1024, "Largest ingest request body (413 above).")
    flush_records: int = _setting(200_000, "Staged records that trigger a flush to the lake.")
    flush_interval: timedelta = _setting(timedelta(seconds=30), "Longest a staged record waits for the lake.")
    max_staged_records: int = _setting(5_000_000, "Staging backlog above which ingest answers 503.")
    dedupe_window: timedelta = _setting(timedelta(days=35), "How long a record's dedupe key is remembered.")
    quarantine_retention: timedelta = _setting(
        timedelta(days=30), "How long a rejected record is kept, sealed, for replay; then it is deleted."
    )


@dataclass(frozen=True)
class LakeSettings:
    """The Iceberg lake of pseudonymised records."""

    catalog_url: str = _setting("", "Iceberg SQL catalog URL; empty = SQLite in data_dir/lake.")
    warehouse: str = _setting("", "Where Parquet and metadata files go; empty = data_dir/lake/warehouse.")
    maintenance_interval: timedelta = _setting(timedelta(hours=1), "How often small files are compacted.")
    snapshot_retention: timedelta = _setting(timedelta(days=7), "Snapshots older than this are expired.")
    small_file_bytes: int = _setting(32 * 1024 * 1024, "Data files below this size are compacted.")


@dataclass(frozen=True)
class VaultSettings:
    """The recording vault: envelope format parameters and upload limits."""

    chunk_size: int = _setting(65536, "Plaintext bytes per authenticated chunk of a new recording file.")
    max_recording_bytes: int = _setting(4 * 1024**3, "Largest recording a PBX may upload (413 above).")
    rewrap_batch_size: int = _setting(500, "Key rows rewrapped per transaction by `telgate keys rotate`.")


@dataclass(frozen=True)
class ReleaseSettings:
    """Releases of recordings to customers over SFTP: credential lifetime, sessions, lock-out."""

    default_ttl: timedelta = _setting(timedelta(hours=72), "Lifetime of a release credential without --ttl.")
    max_ttl: timedelta = _setting(timedelta(days=30), "Longest lifetime an operator may give a credential.")
    strict_single_session: bool = _setting(
        False, "Allow exactly one SFTP session per credential (else more from the claiming address)."
    )
    max_failures: int = _setting(5, "Failed SFTP logins from one address before it is banned.")
    failure_window: timedelta = _setting(timedelta(minutes=15), "Window in which failed SFTP logins count.")
    ban: timedelta = _setting(timedelta(minutes=30), "How long a banned address is refused every SFTP login.")


@dataclass(frozen=True)
class AccessSettings:
    """Access requests: the lifetime of a granted one-time password and how DPOs are told of requests."""

    grant_ttl: timedelta = _setting(timedelta(hours=24), "How long an approved grant's one-time password is valid.")
    webhook_url: Secret = _setting(  # noqa: RUF009 - a Secret never changes
        Secret(""), "URL POSTed {request_id, recording_id} when a request waits; empty = none (secret)."
    )
    webhook_attempts: int = _setting(3, "Delivery attempts of one webhook notification (with back-off).")


@dataclass(frozen=True)
class Settings:
    """All settings of one gateway node."""

    server: ServerSettings = field(default_factory=ServerSettings)
    metadata: MetadataSettings = field(default_factory=MetadataSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    vault: VaultSettings = field(default_factory=VaultSettings)
    lake: LakeSettings = field(default_factory=LakeSettings)
    release: ReleaseSettings = field(default_factory=ReleaseSettings)
    access: AccessSettings = field(default_factory=AccessSettings)

    @property
    def data_dir(self) -> Path:
        """The data directory, absolute."""
        return self.server.data_dir.resolve()

    @property
    def metadata_url(self) -> str:
        """The metadata store URL, defaulting to SQLite inside the data directory."""
        return self.metadata.url or f"sqlite:///{self.data_dir / 'telgate.sqlite'}"


_SECTIONS: dict[str, type[Any]] = {f.name: get_type_hints(Settings)[f.name] for f in dataclasses.fields(Settings)}

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``15m``, ``72h``, ``7d`` or ``2w`` into a timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration (use e.g. 30s, 15m, 72h, 7d): {text!r}")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def format_duration(value: timedelta) -> str:
    """The inverse of ``parse_duration`` for whole units."""
    seconds = int(value.total_seconds())
    for suffix, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"


def _coerce(kind: Any, raw: Any, name: str) -> Any:
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if kind is int:
            if isinstance(raw, bool):
                raise ValueError("not an integer")
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(str(raw))
        if kind is timedelta:
            return raw if isinstance(raw, timedelta) else parse_duration(str(raw))
        if kind is Secret:
            return raw if isinstance(raw, Secret) else Secret(str(raw))
        if kind is str:
            if not isinstance(raw, str):
                raise ValueError("not a string")
            return raw
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: {exc}", details={"setting": name}) from exc
    raise ConfigError(f"setting {name}: unsupported type {kind!r}")


def _section_from(section_cls: type[Any], section: str, values: Mapping[str, Any]) -> Any:
    hints = get_type_hints(section_cls)
    known = {f.name for f in dataclasses.fields(section_cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{section}]: {', '.join(sorted(unknown))}")
    kwargs = {key: _coerce(hints[key], raw, f"{section}.{key}") for key, raw in values.items()}
    return section_cls(**kwargs)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build and validate the settings from default file, config file, environment and overrides."""
    environ = os.environ if environ is None else environ
    merged: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    sources = [_read_toml(DEFAULT_CONFIG_PATH)]
    config_file = config_file or (Path(environ["TELGATE_CONFIG"]) if environ.get("TELGATE_CONFIG") else None)
    if config_file is not None:
        sources.append(_read_toml(config_file))
    for source in sources:
        for section, values in source.items():
            if section not in merged or not isinstance(values, dict):
                raise ConfigError(f"unknown settings section [{section}]")
            merged[section].update(values)
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == "TELGATE_CONFIG":
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        env_section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        if env_section is None:
            continue  # other TELGATE_* variables (tests, CLI) are not settings
        merged[env_section][rest[len(env_section) + 1 :]] = raw
    for section, values in (overrides or {}).items():
        merged[section].update(values)
    settings = Settings(**{name: _section_from(cls, name, merged[name]) for name, cls in _SECTIONS.items()})
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Cross-field checks that a type alone cannot express."""
    for name, port in (
        ("server.http_port", settings.server.http_port),
        ("server.sftp_port", settings.server.sftp_port),
    ):
        if not 0 <= port <= 65535:
            raise ConfigError(f"setting {name}: port out of range: {port}")
    if not 0 <= settings.server.http_workers <= 64:
        raise ConfigError(f"setting server.http_workers: must be 0 to 64, not {settings.server.http_workers}")
    try:
        ZoneInfo(settings.ingest.default_timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"setting ingest.default_timezone: unknown zone {settings.ingest.default_timezone!r}"
        ) from exc
    if len(settings.ingest.default_country) != 2 or not settings.ingest.default_country.isalpha():
        raise ConfigError("setting ingest.default_country: use an ISO 3166 alpha-2 code such as GB")
    if settings.security.login_max_failures < 1:
        raise ConfigError("setting security.login_max_failures: must be at least 1")
    if not 1024 <= settings.vault.chunk_size <= 16 * 1024 * 1024:
        raise ConfigError("setting vault.chunk_size: must be between 1024 and 16777216 bytes")
    if settings.vault.max_recording_bytes < 0:
        raise ConfigError("setting vault.max_recording_bytes: must not be negative")
    if settings.vault.rewrap_batch_size < 1:
        raise ConfigError("setting vault.rewrap_batch_size: must be at least 1")
    release = settings.release
    if not timedelta(0) < release.default_ttl <= release.max_ttl:
        raise ConfigError("setting release.default_ttl: must be positive and at most release.max_ttl")
    if release.max_failures < 1:
        raise ConfigError("setting release.max_failures: must be at least 1")
    if settings.access.grant_ttl <= timedelta(0):
        raise ConfigError("setting access.grant_ttl: must be positive")
    webhook_url = settings.access.webhook_url.reveal()
    if webhook_url and not webhook_url.startswith(("http://", "https://")):
        raise ConfigError("setting access.webhook_url: must start with http:// or https://")
    if settings.access.webhook_attempts < 1:
        raise ConfigError("setting access.webhook_attempts: must be at least 1")
    scheme = settings.metadata_url.split(":", 1)[0]
    if scheme not in {"sqlite", "postgresql"}:
        raise ConfigError(f"setting metadata.url: unknown scheme {scheme!r} (use sqlite:/// or postgresql://)")


def describe_settings(settings: Settings) -> list[tuple[str, str, str]]:
    """Rows of (name, value, help) for every setting, secrets redacted."""
    rows: list[tuple[str, str, str]] = []
    for section in dataclasses.fields(settings):
        section_value = getattr(settings, section.name)
        for f in dataclasses.fields(section_value):
            value = getattr(section_value, f.name)
            shown = format_duration(value) if isinstance(value, timedelta) else str(value)
            rows.append((f"{section.name}.{f.name}", shown, f.metadata["help"]))
    return rows
