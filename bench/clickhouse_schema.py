"""ClickHouse tables mirroring a set of metric definitions, for bench/peer_clickhouse.py.

Generated from the loaded :class:`~mercato.metrics.definitions.Definitions`, so they track the
definitions: one AggregatingMergeTree table per stored metric, keyed like the kernel's partials
(merchant, dimension, member, 15-minute UTC bucket as epoch seconds; the metric is the table),
filled by a SELECT that follows mercato/metrics/kernel.py:

* the metric's event types and ``where`` conditions pick the events, and of those the ones
  the kernel would count (``ok``) or count as ``invalid`` (``bad``: a value present but of the
  wrong kind, :data:`~mercato.metrics.batch.VALUE_RULES`);
* one ``ARRAY JOIN`` gives each event a total row (``dimension = ''``, ``member = ''``) and one
  row per dimension of the metric (a missing value is the member ``"(none)"``);
* states per kind: ``countIf`` (count), ``sumIf`` / ``minIf`` / ``maxIf`` of the integer
  value, ``uniqHLL12If`` (count_distinct), ``quantilesIf(<the metric's quantiles>)``
  (percentile), and ``countIf(bad)`` as ``invalid``.

The SELECT reads columns named as the archive's (``merchant_id, type, event_time,
received_at, properties, context, ...`` with ``properties`` and ``context`` as JSON text), so
the same statement serves the materialized views over the raw events and INSERT ... SELECT
from the archive's Parquet files.
"""

from __future__ import annotations

from mercato.metrics.batch import MAX_INTEGER, TOP_LEVEL, column, invalid_column
from mercato.metrics.definitions import Condition, Definitions, Metric
from mercato.metrics.kernel import BUCKET_SECONDS, NONE_MEMBER, TOTAL, value_kind

TIME = "DateTime64(6, 'UTC')"
RAW_COLUMNS = (
    ("event_id", "String"),
    ("merchant_id", "String"),
    ("type", "LowCardinality(String)"),
    ("event_time", TIME),
    ("original_timestamp", f"Nullable({TIME})"),
    ("sent_at", f"Nullable({TIME})"),
    ("received_at", TIME),
    ("properties", "String"),  # JSON text, as the archive holds it
    ("context", "String"),
    ("source", "LowCardinality(String)"),
)
NUMBERS = "('Int64', 'UInt64', 'Double')"
RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})$"
KEY = "merchant_id, dimension, member, bucket"


def literal(value: str | float) -> str:
    """A ClickHouse literal of a string or a number."""
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


def table(metric: Metric) -> str:
    return f"rollup_{metric.name}"


def raw_table(name: str = "raw") -> str:
    columns = ", ".join(f"{c} {t}" for c, t in RAW_COLUMNS)
    return f"CREATE TABLE {name} ({columns}) ENGINE = MergeTree ORDER BY (merchant_id, event_time)"


def states(metric: Metric) -> list[tuple[str, str, str]]:
    """``(column, state type, state expression)`` of a metric's rollup table; the
    expressions read ``value``, ``ok`` and ``bad`` (see :func:`rows`)."""
    levels = f"({', '.join(repr(q) for q in metric.quantiles)})"
    function, parameters = {
        "sum": ("sumIf", ""),
        "min": ("minIf", ""),
        "max": ("maxIf", ""),
        "count_distinct": ("uniqHLL12If", ""),
        "percentile": ("quantilesIf", levels),
    }.get(metric.kind, ("", ""))
    columns = [("count", "AggregateFunction(countIf, UInt8)", "countIfState(ok)")]
    if function:
        name = metric.kind if metric.kind in ("sum", "min", "max") else "sketch"
        kind = {"int": "Int64", "num": "Float64", "str": "String"}[value_kind(metric)]
        state = f"AggregateFunction({function}{parameters}, {kind}, UInt8)"
        columns.append((name, state, f"{function}State{parameters}(value, ok)"))
    columns.append(("invalid", "AggregateFunction(countIf, UInt8)", "countIfState(bad)"))
    return columns


def rollup_table(metric: Metric) -> str:
    columns = ", ".join(f"{name} {kind}" for name, kind, _ in states(metric))
    return (
        f"CREATE TABLE {table(metric)} (merchant_id String, dimension LowCardinality(String),"
        f" member LowCardinality(String), bucket Int64, {columns})"
        f" ENGINE = AggregatingMergeTree ORDER BY ({KEY})"
    )


def rollup_select(metric: Metric, definitions: Definitions, source: str) -> str:
    """The SELECT computing ``metric``'s rollup states from the events in ``source``."""
    aggregates = ", ".join(f"{expression} AS {name}" for name, _, expression in states(metric))
    return (
        f"SELECT merchant_id, dm.1 AS dimension, dm.2 AS member, bucket, {aggregates}"
        f" FROM ({rows(metric, definitions, source)}) ARRAY JOIN members AS dm"
        f" GROUP BY {KEY}"
    )


def materialized_view(metric: Metric, definitions: Definitions, source: str = "raw") -> str:
    return (
        f"CREATE MATERIALIZED VIEW mv_{metric.name} TO {table(metric)}"
        f" AS {rollup_select(metric, definitions, source)}"
    )


def rows(metric: Metric, definitions: Definitions, source: str) -> str:
    """The matched events of ``source`` the kernel counts (``ok``) or counts as invalid
    (``bad``), each with its ``bucket``, ``value`` (when the metric has one) and ``members``."""
    fields = Fields()
    kind = value_kind(metric)
    unusable, usable, time = [], [], metric.time
    if metric.time not in TOP_LEVEL:
        unusable.append(fields.invalid(metric.time, "time"))
        usable.append(f"isNotNull({fields.get(metric.time, 'time')})")
        # an unusable time field is counted in the bucket of the event's own time
        time = f"coalesce({fields.get(metric.time, 'time')}, event_time)"
    value = ""
    if metric.value is not None:
        if metric.value not in TOP_LEVEL:
            unusable.append(fields.invalid(metric.value, kind))
        usable.append(f"isNotNull({fields.get(metric.value, kind)})")
        default = {"str": "''", "num": "0.", "int": "0"}[kind]
        value = f"ifNull({fields.get(metric.value, kind)}, {default}) AS value, "
    is_bad = " OR ".join(unusable) or "0"
    is_ok = " AND ".join(([f"NOT ({is_bad})"] if unusable else []) + usable) or "1"
    bucket = f"intDiv(toUnixTimestamp64Micro({time}), {BUCKET_SECONDS * 1_000_000})"
    members = [f"('{TOTAL}', '{TOTAL}')"] + [
        f"({literal(name)}, ifNull({fields.get(definitions.dimensions[name].field, 'str')},"
        f" {literal(NONE_MEMBER)}))"
        for name in metric.dimensions
    ]
    match = [f"type IN ({', '.join(literal(t) for t in metric.events)})"]
    match += [condition(c, fields) for c in metric.where]
    return (
        f"SELECT merchant_id, {bucket} * {BUCKET_SECONDS} AS bucket, {value}"
        f"toUInt8({is_ok}) AS ok, toUInt8({is_bad}) AS bad,"
        f" [{', '.join(members)}] AS members{fields.select()}"
        f" FROM {source} WHERE {' AND '.join(f'({m})' for m in match)} AND (ok OR bad)"
    )


class Fields:
    """The typed fields a statement reads, each computed once under its batch column's name
    (``properties.amount#int``, ``properties.amount#int#invalid``; mercato/metrics/batch.py):
    NULL where the field is absent or unusable as that kind."""

    def __init__(self) -> None:
        self.columns: dict[str, str] = {}

    def select(self) -> str:
        return "".join(f", {expression} AS {name}" for name, expression in self.columns.items())

    def _define(self, name: str, expression: str) -> str:
        quoted = f"`{name}`"
        self.columns.setdefault(quoted, expression)
        return quoted

    def _json(self, path: str) -> tuple[str, str, str]:
        root, *keys = path.split(".")
        arguments = f"{root}, {', '.join(literal(k) for k in keys)}"
        return arguments, self._define(f"{path}#type", f"JSONType({arguments})"), root

    def get(self, path: str, kind: str) -> str:
        """Field ``path`` as ``kind`` (str, num, int, time)."""
        if path in TOP_LEVEL:
            return path
        arguments, json_type, _ = self._json(path)
        if kind == "str":  # a string, or a number or boolean as its JSON text
            expression = (
                f"multiIf({json_type} = 'String', JSONExtractString({arguments}),"
                f" {json_type} IN ('Int64', 'UInt64', 'Double', 'Bool'),"
                f" JSONExtractRaw({arguments}), NULL)"
            )
        elif kind == "num":
            expression = f"if({json_type} IN {NUMBERS}, JSONExtractFloat({arguments}), NULL)"
        elif kind == "int":  # a JSON integer within +-2^53
            number = f"JSONExtractInt({arguments})"
            expression = (
                f"if({json_type} = 'Int64' AND {number} BETWEEN {-MAX_INTEGER} AND"
                f" {MAX_INTEGER}, {number}, NULL)"
            )
        else:  # an RFC 3339 time with an offset (one without is ambiguous)
            text = f"JSONExtractString({arguments})"
            expression = (
                f"if({json_type} = 'String' AND match({text}, {literal(RFC3339)}),"
                f" parseDateTime64BestEffortOrNull({text}, 6, 'UTC'), NULL)"
            )
        return self._define(column(path, kind), expression)

    def invalid(self, path: str, kind: str) -> str:
        """Whether field ``path`` is present but unusable as ``kind``."""
        _, json_type, _ = self._json(path)
        expression = f"{json_type} != 'Null' AND isNull({self.get(path, kind)})"
        return self._define(invalid_column(path, kind), expression)


def condition(c: Condition, fields: Fields) -> str:
    """One ``where`` condition, as the kernel's ``_condition`` reads it."""
    op, value = c.op, c.value
    if op == "exists":
        return f"isNotNull({fields.get(c.field, 'str')})"
    if op == "missing":
        return f"isNull({fields.get(c.field, 'str')})"
    values = value if isinstance(value, list) else [value]
    numeric = any(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if numeric or op in ("gt", "gte", "lt", "lte"):
        subject = fields.get(c.field, "num")
        items = [literal(float(v)) for v in values if isinstance(v, int | float)]
    else:
        subject = fields.get(c.field, "str")
        items = [
            literal(("true" if v else "false") if isinstance(v, bool) else str(v)) for v in values
        ]
    if op in ("in", "not_in"):
        found = f"ifNull({subject} IN ({', '.join(items)}), 0)"
        return f"NOT {found}" if op == "not_in" else found
    compare = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
    result = f"{subject} {compare} {items[0]}"
    return f"ifNull({result}, 1)" if op == "ne" else result


def schema(definitions: Definitions, source: str = "raw") -> list[str]:
    """Every statement creating the rollup tables and, when ``source`` is given, the raw
    table and its materialized views."""
    statements = [rollup_table(m) for m in definitions.stored]
    if source:
        statements.append(raw_table(source))
        statements += [materialized_view(m, definitions, source) for m in definitions.stored]
    return statements
