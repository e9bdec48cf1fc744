"""Configuration: one TOML file plus ``MERCATO_*`` environment variables, read here only.

Every role gets its section of one frozen, typed :class:`Config`. Sources, later ones win:

1. defaults (below; ``mercato config show`` prints them),
2. the TOML file given by ``--config`` or ``MERCATO_CONFIG``,
3. environment variables ``MERCATO_<KEY>`` for top-level keys and
   ``MERCATO_<SECTION>_<KEY>`` for keys of a section, e.g. ``MERCATO_DATA_DIR=/srv/mercato``,
   ``MERCATO_LOG_PARTITIONS=16``, ``MERCATO_COLLECTOR_PORT=9000``. List values are
   comma-separated.

An unknown key or a value of the wrong type stops start-up with a message naming the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from mercato.errors import MercatoError

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class ConfigError(MercatoError):
    """The configuration is invalid; the message names the key."""


class LogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[log]``: the durable event log between collectors and consumers."""

    backend: Literal["file"] = "file"
    partitions: Positive = 8
    segment_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 128 * 1024 * 1024
    retention_hours: NonNegative = 168
    retention_bytes: NonNegative = 0
    fsync: bool = True


class CollectorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[collector]``: the HTTP ingest endpoint."""

    host: str = "127.0.0.1"
    port: Port = 8321
    max_event_bytes: Positive = 32 * 1024
    max_body_bytes: Positive = 500 * 1024
    max_future_seconds: NonNegative = 24 * 3600
    max_pending_events: Positive = 200_000
    retry_after_seconds: Positive = 1
    segment_merchant_id_paths: list[str] = msgspec.field(
        default_factory=lambda: ["properties.merchant_id", "context.groupId"]
    )
    cors_origins: list[str] = msgspec.field(default_factory=lambda: ["*"])


class StoreConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[store]``: the serving store of rollups, consumer offsets and definitions versions."""

    backend: Literal["sqlite"] = "sqlite"
    path: str = ""  # empty: <data_dir>/store.sqlite3
    busy_timeout_ms: NonNegative = 5000
    cache_mb: NonNegative = 64
    mmap_mb: NonNegative = 256


class AggregatorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[aggregator]``: the stream rollups (speed layer)."""

    definitions: str = ""  # empty: the shipped commerce definitions
    partitions: list[Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=list)
    max_batch_records: Positive = 50_000
    dedup_window: Positive = 200_000
    idle_sleep_ms: Positive = 200


class ArchiveConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[archive]``: the raw-event archive (Parquet, partitioned by event hour)."""

    path: str = ""  # empty: <data_dir>/archive
    partitions: list[Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=list)
    max_batch_records: Positive = 200_000
    flush_interval_seconds: Annotated[float, msgspec.Meta(ge=0)] = 10
    idle_sleep_ms: Positive = 500
    compression_level: Annotated[int, msgspec.Meta(ge=1, le=22)] = 3


class ApiConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[api]``: the merchant query API."""

    host: str = "127.0.0.1"
    port: Port = 8322
    secret: str = ""  # empty: <data_dir>/secret.key, created on first use
    admin_token: str = ""  # empty: <data_dir>/admin.token, created on first use
    token_ttl_seconds: Positive = 86_400
    rate_limit_per_second: Positive = 20
    rate_limit_burst: Positive = 40
    default_range_days: Positive = 7
    max_points: Positive = 5_000
    top: Positive = 5
    overview: list[str] = msgspec.field(
        default_factory=lambda: [
            "gross_revenue",
            "net_revenue",
            "orders",
            "average_order_value",
            "unique_customers",
            "conversion_rate",
            "refunds",
        ]
    )


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole configuration."""

    data_dir: str = "mercato-data"
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    collector: CollectorConfig = msgspec.field(default_factory=CollectorConfig)
    aggregator: AggregatorConfig = msgspec.field(default_factory=AggregatorConfig)
    archive: ArchiveConfig = msgspec.field(default_factory=ArchiveConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def log_path(self) -> Path:
        return self.data_path / "log"

    @property
    def keys_path(self) -> Path:
        return self.data_path / "keys.json"

    @property
    def archive_path(self) -> Path:
        return Path(self.archive.path) if self.archive.path else self.data_path / "archive"

    @property
    def store_path(self) -> Path:
        return Path(self.store.path) if self.store.path else self.data_path / "store.sqlite3"


SECTIONS: dict[str, type[msgspec.Struct]] = {
    "log": LogConfig,
    "collector": CollectorConfig,
    "aggregator": AggregatorConfig,
    "archive": ArchiveConfig,
    "api": ApiConfig,
    "store": StoreConfig,
}


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read the TOML file at ``path`` (or ``$MERCATO_CONFIG``) and the environment."""
    env = os.environ if env is None else env
    path = path if path is not None else env.get("MERCATO_CONFIG")
    raw: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for name, value in env.items():
        if name.startswith("MERCATO_") and name != "MERCATO_CONFIG":
            _set_from_env(raw, name, value)
    try:
        return msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_name_key(str(exc))}") from None


def _set_from_env(raw: dict[str, Any], name: str, value: str) -> None:
    rest = name.removeprefix("MERCATO_").lower()
    for section, struct in SECTIONS.items():
        if rest.startswith(section + "_"):
            key = rest.removeprefix(section + "_")
            if key not in struct.__struct_fields__:
                raise ConfigError(f"unknown environment variable {name}: [{section}] has no {key}")
            target = raw.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"invalid configuration: {section} must be a table")
            target[key] = _env_value(struct, key, value)
            return
    if rest not in Config.__struct_fields__ or rest in SECTIONS:
        raise ConfigError(f"unknown environment variable {name}")
    raw[rest] = value


def _env_value(struct: type[msgspec.Struct], key: str, value: str) -> object:
    default = getattr(struct(), key)
    if isinstance(default, list):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _name_key(message: str) -> str:
    """Turn msgspec's ``... - at `$.log.partitions``` into ``log.partitions: ...``."""
    head, sep, where = message.rpartition(" - at `$")
    if not sep:
        return message
    key = where.rstrip("`").lstrip(".")
    if head.startswith("Object contains unknown field"):
        field = head.split("`")[1]
        return f"unknown key {'.'.join(filter(None, [key, field]))!r}"
    return f"{key}: {head}"


def dump_config(config: Config) -> str:
    """The configuration as TOML, for ``mercato config show``."""
    lines = []
    top = msgspec.to_builtins(config)
    for key, value in top.items():
        if key not in SECTIONS:
            lines.append(f"{key} = {_toml_value(value)}")
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        for key, value in top[section].items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return msgspec.json.encode(value).decode()
