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

import difflib
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin, get_type_hints

import msgspec

from mercato.errors import ConfigError, CronError

__all__ = ["ConfigError"]  # its home is mercato.errors; imported from here too
from mercato.cron import parse_cron

Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
HeaderBytes = Annotated[int, msgspec.Meta(ge=1024)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class ArchiveLocation(msgspec.Struct, frozen=True):
    """An archive on an object store: its ``s3://bucket/prefix`` URL and how to reach it."""

    url: str
    s3_endpoint: str = ""  # empty: AWS
    s3_region: str = ""  # empty: the AWS SDK's default

    def __str__(self) -> str:
        return self.url


class LogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[log]``: the durable event log between collectors and consumers."""

    backend: Literal["file", "kafka"] = "file"
    partitions: Positive = 8
    segment_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 128 * 1024 * 1024
    retention_hours: NonNegative = 168
    retention_bytes: NonNegative = 0
    retention_waits_for: list[Literal["aggregator", "archiver"]] = msgspec.field(
        default_factory=lambda: ["aggregator", "archiver"]
    )
    fsync: bool = True
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_topic: str = "mercato-events"
    kafka_replication_factor: Positive = 3
    kafka_delivery_timeout_ms: Positive = 30_000
    kafka_queue_max_messages: Positive = 1_000_000
    kafka_linger_ms: NonNegative = 5
    # managed Kafka usually wants TLS and SASL (the password is best set as an env variable)
    kafka_security_protocol: Literal["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"] = "plaintext"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_ca_location: str = ""  # empty: the system's CA certificates


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
    # events older than this before receipt are refused (Segment: quarantined); at most 200
    # years, so that receipt minus it is still a date
    max_past_seconds: Annotated[int, msgspec.Meta(ge=0, le=200 * 365 * 86_400)] = 5 * 365 * 86_400
    # deeper events are refused: every consumer decodes them with a recursive decoder
    max_nesting_depth: Annotated[int, msgspec.Meta(ge=2, le=512)] = 64
    # a Segment batch with more messages is refused whole (413): each invalid one costs a
    # quarantine entry, so this bounds what one request can cost
    segment_max_messages: Positive = 2500
    # the server's bounds (mercato.asgi.limits.ServerLimits); a request decodes its batch on
    # the event loop, so few run at once: an iteration of the loop stays short
    max_connections: Positive = 1000
    max_requests_in_flight: Positive = 16
    max_queue_seconds: Seconds = 0.5
    max_header_bytes: HeaderBytes = 32 * 1024
    max_headers: Positive = 100
    header_timeout_seconds: Seconds = 10


class StoreConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[store]``: the serving store of rollups, consumer offsets and definitions versions."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: str = ""  # empty: <data_dir>/store.sqlite3
    busy_timeout_ms: NonNegative = 5000
    cache_mb: NonNegative = 64
    mmap_mb: NonNegative = 256
    dsn: str = ""  # postgres: a libpq connection string or postgresql:// URI
    pool_size: Positive = 8  # postgres: most connections per process
    connect_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10

    def __post_init__(self) -> None:
        if self.backend == "postgres" and not self.dsn:
            raise ValueError('backend "postgres" needs a dsn, e.g. "postgresql://host/mercato"')


class AggregatorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[aggregator]``: the stream rollups (speed layer)."""

    definitions: str = ""  # empty: the shipped commerce definitions
    partitions: list[Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=list)
    max_batch_records: Positive = 50_000
    dedup_window: Positive = 200_000
    idle_sleep_ms: Positive = 200
    # with the kafka log and no `partitions`: aggregators share the topic through this group
    kafka_group: str = "mercato-aggregator"
    kafka_session_timeout_ms: Annotated[int, msgspec.Meta(ge=6000)] = 10_000  # Kafka's minimum


class ArchiveConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[archive]``: the raw-event archive (Parquet, partitioned by event hour)."""

    path: str = ""  # empty: <data_dir>/archive; or s3://bucket/prefix
    partitions: list[Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=list)
    max_batch_records: Positive = 200_000
    flush_interval_seconds: Annotated[float, msgspec.Meta(ge=0)] = 10
    idle_sleep_ms: Positive = 500
    compression_level: Annotated[int, msgspec.Meta(ge=1, le=22)] = 3
    s3_endpoint: str = ""  # empty: AWS; else a URL like http://minio:9000 (scheme: TLS or not)
    s3_region: str = ""  # empty: the AWS SDK's default


class BatchConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[batch]``: the batch layer that seals hours from the archive."""

    engine: Literal["duckdb", "spark"] = "duckdb"
    grace_minutes: NonNegative = 10
    threads: NonNegative = 0  # 0: every core
    chunk_rows: Positive = 500_000
    spark_master: str = ""  # empty: local mode in this process


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
    threads: Positive = 4  # worker threads for store reads and folding, off the event loop
    max_queued: NonNegative = 64  # requests waiting for a worker beyond these: 503
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
    # the collectors whose /metrics the console's ingest panel sums, as host:port; empty:
    # the one at [collector] host:port
    collectors: list[str] = msgspec.field(default_factory=list)
    # the server's bounds (mercato.asgi.limits.ServerLimits); store reads run off the event
    # loop, so more requests may run at once than on the collector
    max_connections: Positive = 1000
    max_requests_in_flight: Positive = 128
    max_queue_seconds: Seconds = 0.5
    max_header_bytes: HeaderBytes = 32 * 1024
    max_headers: Positive = 100
    header_timeout_seconds: Seconds = 10

    def __post_init__(self) -> None:
        for target in self.collectors:
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"collectors: {target!r} is not host:port")

    def collector_targets(self, collector: CollectorConfig) -> list[tuple[str, int]]:
        """The (host, port) of every collector to scrape."""
        if not self.collectors:
            host = "127.0.0.1" if collector.host in ("", "0.0.0.0") else collector.host
            return [(host, collector.port)]
        return [(t.rpartition(":")[0], int(t.rpartition(":")[2])) for t in self.collectors]


class JobConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[scheduler.jobs.NAME]``: one scheduled job, a ``mercato`` command run on a schedule."""

    schedule: str  # five-field cron, UTC
    command: list[str]  # mercato's arguments, e.g. ["seal"]; or an absolute path and its args
    retries: NonNegative = 2
    backoff_seconds: Annotated[float, msgspec.Meta(ge=0)] = 30
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3600
    enabled: bool = True


# The jobs every installation has; a [scheduler.jobs.NAME] table changes keys of one (or adds a
# job), and `enabled = false` turns one off.
DEFAULT_JOBS: dict[str, dict[str, Any]] = {
    "seal": {"schedule": "*/5 * * * *", "command": ["seal"], "timeout_seconds": 900},
    "compact": {"schedule": "7 * * * *", "command": ["archive", "compact", "--all"]},
    "retention": {"schedule": "30 3 * * *", "command": ["log", "retention"]},
    "drift": {"schedule": "15 * * * *", "command": ["drift"]},
    "prune": {"schedule": "45 3 * * *", "command": ["versions", "prune"]},
}
JOB_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


class SchedulerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[scheduler]``: the job scheduler and its jobs."""

    lease_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30
    tick_seconds: Annotated[float, msgspec.Meta(gt=0)] = 1
    on_error_command: list[str] = msgspec.field(default_factory=list)
    on_error_webhook: str = ""
    jobs: dict[str, JobConfig] = msgspec.field(
        default_factory=lambda: msgspec.convert(DEFAULT_JOBS, dict[str, JobConfig])
    )

    def __post_init__(self) -> None:
        if self.tick_seconds >= self.lease_seconds:
            raise ValueError(
                f"tick_seconds ({self.tick_seconds}) must be shorter than lease_seconds "
                f"({self.lease_seconds}), or the leader's lease lapses between renewals"
            )
        if self.on_error_webhook and not self.on_error_webhook.startswith(("http://", "https://")):
            raise ValueError(f"on_error_webhook must be an http(s) URL: {self.on_error_webhook!r}")


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole configuration."""

    data_dir: str = "mercato-data"
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    collector: CollectorConfig = msgspec.field(default_factory=CollectorConfig)
    aggregator: AggregatorConfig = msgspec.field(default_factory=AggregatorConfig)
    archive: ArchiveConfig = msgspec.field(default_factory=ArchiveConfig)
    batch: BatchConfig = msgspec.field(default_factory=BatchConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)

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
    def archive_path(self) -> Path | ArchiveLocation:
        """The archive root: a local directory, or where an ``s3://`` one is and how to reach
        it (a URL alone does not say which endpoint and region); ``mercato.archive`` opens
        either."""
        if "://" in self.archive.path:
            settings = self.archive
            return ArchiveLocation(settings.path, settings.s3_endpoint, settings.s3_region)
        return Path(self.archive.path) if self.archive.path else self.data_path / "archive"

    @property
    def store_path(self) -> Path:
        return Path(self.store.path) if self.store.path else self.data_path / "store.sqlite3"


SECTIONS: dict[str, type[msgspec.Struct]] = {
    "log": LogConfig,
    "collector": CollectorConfig,
    "aggregator": AggregatorConfig,
    "archive": ArchiveConfig,
    "batch": BatchConfig,
    "api": ApiConfig,
    "store": StoreConfig,
    "scheduler": SchedulerConfig,
}
# Tables of tables inside a section: (section, key) -> the struct of each inner table.
NESTED: dict[tuple[str, str], type[msgspec.Struct]] = {("scheduler", "jobs"): JobConfig}
# Variables the scheduler sets for its error hook; they are not configuration.
NOT_CONFIG = {"MERCATO_CONFIG", "MERCATO_JOB", "MERCATO_RUN_ID", "MERCATO_ATTEMPT", "MERCATO_ERROR"}


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
        if name.startswith("MERCATO_") and name not in NOT_CONFIG:
            _set_from_env(raw, name, value)
    _merge_jobs(raw)
    try:
        return msgspec.convert(raw, Config, strict=False)
    except msgspec.ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}: {_name_key(str(exc))}") from None


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean X?)`` for the choice nearest ``word``, if one is near."""
    near = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    return f" (did you mean {near[0]}?)" if near else ""


def _env_names() -> list[str]:
    """Every ``MERCATO_*`` variable that names a configuration key."""
    names = [f"MERCATO_{k}".upper() for k in Config.__struct_fields__ if k not in SECTIONS]
    for section, struct in SECTIONS.items():
        names += [f"MERCATO_{section}_{k}".upper() for k in struct.__struct_fields__]
    return names


def _keys_at(key: str) -> list[str]:
    """The keys allowed in the table at dotted ``key`` ("" is the top level)."""
    struct: type[msgspec.Struct] | None = Config if not key else SECTIONS.get(key)
    return list(struct.__struct_fields__) if struct is not None else []


def _set_from_env(raw: dict[str, Any], name: str, value: str) -> None:
    rest = name.removeprefix("MERCATO_").lower()
    for section, struct in SECTIONS.items():
        if rest.startswith(section + "_"):
            key = rest.removeprefix(section + "_")
            if _set_nested_from_env(raw, name, section, key, value):
                return
            if key not in struct.__struct_fields__:
                known = [f"MERCATO_{section}_{k}".upper() for k in struct.__struct_fields__]
                raise ConfigError(
                    f"unknown environment variable {name}: [{section}] has no {key}"
                    f"{_did_you_mean(name, known)}"
                )
            target = raw.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError(f"invalid configuration: {section} must be a table")
            target[key] = _env_value(struct, key, value)
            return
    if rest not in Config.__struct_fields__ or rest in SECTIONS:
        raise ConfigError(f"unknown environment variable {name}{_did_you_mean(name, _env_names())}")
    raw[rest] = value


def _set_nested_from_env(
    raw: dict[str, Any], name: str, section: str, key: str, value: str
) -> bool:
    """``MERCATO_SCHEDULER_JOBS_<JOB>_<KEY>``: one key of one inner table (a job may have
    underscores in its name, so the key is matched at the end)."""
    for (outer, table), struct in NESTED.items():
        if outer != section or not key.startswith(table + "_"):
            continue
        rest = key.removeprefix(table + "_")
        for field in sorted(struct.__struct_fields__, key=len, reverse=True):
            inner = rest.removesuffix("_" + field)
            if inner != rest and inner:
                target = raw.setdefault(section, {}).setdefault(table, {}).setdefault(inner, {})
                if not isinstance(target, dict):
                    raise ConfigError(f"invalid configuration: {section}.{table} must be a table")
                target[field] = _env_value(struct, field, value)
                return True
        raise ConfigError(
            f"unknown environment variable {name}: expected {name[: -len(rest)]}<NAME>_<KEY> "
            f"with KEY one of {', '.join(struct.__struct_fields__)}"
        )
    return False


def _env_value(struct: type[msgspec.Struct], key: str, value: str) -> object:
    if get_origin(get_type_hints(struct)[key]) is list:
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _merge_jobs(raw: dict[str, Any]) -> None:
    """Lay the file's and environment's job tables over :data:`DEFAULT_JOBS`, key by key, and
    check each job so that an error names it."""
    section = raw.get("scheduler", {})
    if not isinstance(section, dict) or "jobs" not in section:
        return
    given = section["jobs"]
    if not isinstance(given, dict):
        raise ConfigError("invalid configuration: scheduler.jobs must be a table of jobs")
    jobs: dict[str, Any] = {name: dict(job) for name, job in DEFAULT_JOBS.items()}
    for name, table in given.items():
        where = f"scheduler.jobs.{name}"
        if not JOB_NAME.fullmatch(name):
            raise ConfigError(
                f"invalid configuration: {where}: a job name is lowercase letters, digits, "
                "'-' and '_'"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"invalid configuration: {where} must be a table")
        jobs[name] = {**jobs.get(name, {}), **table}
        try:
            job = msgspec.convert(jobs[name], JobConfig, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid configuration: {_name_key(str(exc), where)}") from None
        if not job.command:
            raise ConfigError(f"invalid configuration: {where}.command must not be empty")
        try:
            parse_cron(job.schedule)
        except CronError as exc:
            raise ConfigError(f"invalid configuration: {where}.schedule: {exc}") from None
    section["jobs"] = jobs


def _name_key(message: str, root: str = "") -> str:
    """Turn msgspec's ``... - at `$.log.partitions``` into ``log.partitions: ...``."""
    head, sep, where = message.rpartition(" - at `$")
    if not sep:
        head, where = message, ""
        if not root and not head.startswith("Object contains unknown field"):
            return message
    key = ".".join(filter(None, [root, where.rstrip("`").lstrip(".")]))
    if head.startswith("Object contains unknown field"):
        field = head.split("`")[1]
        hint = _did_you_mean(field, _keys_at(key))
        return f"unknown key {'.'.join(filter(None, [key, field]))!r}{hint}"
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
        tables = {key for outer, key in NESTED if outer == section}
        for key, value in top[section].items():
            if key not in tables:
                lines.append(f"{key} = {_toml_value(value)}")
        for key in tables:
            for name, inner in top[section][key].items():
                lines.append(f"\n[{section}.{key}.{name}]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in inner.items())
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return msgspec.json.encode(value).decode()
