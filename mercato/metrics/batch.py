"""Normalized events as a columnar batch: the rollup kernel's input.

The definitions say which event fields matter; :class:`BatchBuilder` decodes log record
values straight into a struct holding only those (msgspec skips the rest in C) and builds a
pyarrow table with the fixed columns ``event_id, merchant_id, type, event_time,
received_at, source`` plus, for each field the definitions use, the typed columns they need:
``<path>#str`` (dimensions, equality filters, distinct counts), ``<path>#num`` (numeric
filters, percentiles), ``<path>#int`` (sum, min, max: money in minor units) and ``<path>#time``
(a metric's own time field). A value of the wrong JSON type becomes null there, and
``<path>#<kind>#invalid`` (see :func:`invalid_column`) is true where the field is present
but unusable as ``kind`` (:data:`VALUE_RULES`), so a metric can count what it had to leave
out instead of losing it silently; an absent or null field is neither.
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from mercato.metrics.definitions import NUMERIC_OPS, Definitions

BASE_COLUMNS = ("event_id", "merchant_id", "type", "event_time", "received_at", "source")
TOP_LEVEL = frozenset(BASE_COLUMNS)
TIMESTAMP = pa.timestamp("us", tz="UTC")
# Integers beyond JavaScript's safe range lose digits in every browser and most JSON tools,
# and bound any sum of a thousand of them to int64.
MAX_INTEGER = 2**53 - 1
VALUE_RULES = {
    "int": f"a JSON integer from {-MAX_INTEGER} to {MAX_INTEGER} (money in minor units)",
    "num": "a finite JSON number",
    "str": "a string, number or boolean",
    "time": "an RFC 3339 time with an offset",
}


def column(path: str, kind: str) -> str:
    """The batch column holding field ``path`` as ``kind`` (str, num, int or time)."""
    if path in TOP_LEVEL:
        return path
    return f"{path}#{kind}"


def invalid_column(path: str, kind: str) -> str:
    """The batch column that is true where field ``path`` is present but unusable as
    ``kind`` (a top-level field is never unusable: the event's schema guarantees it)."""
    return f"{path}#{kind}#invalid"


def columns_needed(definitions: Definitions) -> dict[str, set[str]]:
    """For each field path the definitions read, the kinds of column they need."""
    needed: dict[str, set[str]] = {}

    def need(path: str, kind: str) -> None:
        if path not in TOP_LEVEL:
            needed.setdefault(path, set()).add(kind)

    for metric in definitions.stored:
        for name in metric.dimensions:
            need(definitions.dimensions[name].field, "str")
        for condition in metric.where:
            numeric = condition.op in NUMERIC_OPS or _is_number(condition.value)
            need(condition.field, "num" if numeric else "str")
            if condition.op in ("exists", "missing", "ne", "not_in"):
                need(condition.field, "str")
        if metric.value is not None:
            kind = {"count_distinct": "str", "percentile": "num"}.get(metric.kind, "int")
            need(metric.value, kind)
        if metric.time not in ("event_time", "received_at"):
            need(metric.time, "time")
    return needed


def _is_number(value: object) -> bool:
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


class BatchBuilder:
    """Turns log record values into the kernel's columnar batch, for one set of definitions."""

    def __init__(self, definitions: Definitions) -> None:
        self.needed = columns_needed(definitions)
        self._paths: dict[str, tuple[str, str, list[str]]] = {}
        roots: dict[str, dict[str, str]] = {"properties": {}, "context": {}}
        for path in self.needed:
            root, key, *_ = path.split(".")
            roots[root].setdefault(key, _attribute(key, len(roots[root])))
        structs = {
            root: msgspec.defstruct(
                f"{root.title()}Fields",
                [(attr, Any, msgspec.field(default=None, name=key)) for key, attr in keys.items()],
                gc=False,
            )
            for root, keys in roots.items()
        }
        for path in self.needed:
            root, key, *rest = path.split(".")
            self._paths[path] = (root, roots[root][key], rest)
        required = msgspec.NODEFAULT
        fields: list[tuple[str, Any, Any]] = [
            ("event_id", str, required),
            ("merchant_id", str, required),
            ("type", str, required),
            ("event_time", datetime, required),
            ("original_timestamp", datetime | None, None),
            ("sent_at", datetime | None, None),
            ("received_at", datetime, required),
            (
                "properties",
                structs["properties"],
                msgspec.field(default_factory=structs["properties"]),
            ),
            ("context", structs["context"], msgspec.field(default_factory=structs["context"])),
            ("source", str, ""),
        ]
        # the collector writes every field; producers writing objects may leave some out
        positional = [(name, kind, required) if i < 7 else (name, kind, default)
                      for i, (name, kind, default) in enumerate(fields)]  # fmt: skip
        array_form = msgspec.defstruct("EventFields", positional, array_like=True, gc=False)
        object_form = msgspec.defstruct("EventObject", fields, kw_only=True, gc=False)
        self._array = msgspec.json.Decoder(list[array_form])  # type: ignore[valid-type]
        self._object = msgspec.json.Decoder(object_form)
        self._roots = {
            root: msgspec.json.Decoder(list[struct])  # type: ignore[valid-type]
            for root, struct in structs.items()
        }

    def decode(self, values: Sequence[bytes]) -> list[Any]:
        """Decode record values (array or object form); raises msgspec errors on bad ones."""
        if all(value[:1] == b"[" for value in values):
            return self._array.decode(b"[" + b",".join(values) + b"]")
        return [
            self._array.decode(b"[" + value + b"]")[0]
            if value.lstrip()[:1] == b"["  # JSON may open with whitespace
            else self._object.decode(value)
            for value in values
        ]

    def build(self, events: Sequence[Any]) -> pa.Table:
        """The columnar batch of decoded events."""
        base: dict[str, pa.Array] = {
            "event_id": pa.array([e.event_id for e in events], pa.string()),
            "merchant_id": pa.array([e.merchant_id for e in events], pa.string()),
            "type": pa.array([e.type for e in events], pa.string()),
            "event_time": pa.array([e.event_time for e in events], TIMESTAMP),
            "received_at": pa.array([e.received_at for e in events], TIMESTAMP),
            "source": pa.array([e.source for e in events], pa.string()),
        }
        roots = {
            "properties": [e.properties for e in events],
            "context": [e.context for e in events],
        }
        return self._assemble(base, roots)

    def from_archive(self, rows: pa.Table) -> pa.Table:
        """The columnar batch of archived rows (:data:`mercato.archive.schema.SCHEMA`: the
        base columns as they are, ``properties`` and ``context`` as JSON text)."""
        base = {name: rows[name].combine_chunks() for name in BASE_COLUMNS}
        roots = {
            root: self._roots[root].decode(
                b"[" + b",".join(text.encode() for text in rows[root].to_pylist()) + b"]"
            )
            for root in ("properties", "context")
        }
        return self._assemble(base, roots)

    def _assemble(self, base: dict[str, pa.Array], roots: dict[str, list[Any]]) -> pa.Table:
        arrays = dict(base)
        for path, kinds in sorted(self.needed.items()):
            root, attribute, rest = self._paths[path]
            raw = list(map(attrgetter(attribute), roots[root]))
            for part in rest:
                raw = [v.get(part) if isinstance(v, dict) else None for v in raw]
            for kind in sorted(kinds):
                values, invalid = _CONVERT[kind](raw)
                arrays[column(path, kind)] = values
                arrays[invalid_column(path, kind)] = invalid
        return pa.table(arrays)

    def batch(self, values: Sequence[bytes]) -> pa.Table:
        return self.build(self.decode(values))


def _attribute(key: str, n: int) -> str:
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in key)
    if not name.isidentifier() or keyword.iskeyword(name):
        name = f"f_{name}"
    return f"{name}_{n}"


Converted = tuple[pa.Array, pa.Array]  # the values, and where a present one was unusable


def _unusable(values: list[Any], usable: pa.Array) -> pa.Array:
    """True where a value is present (not null) but did not convert."""
    present = pa.array([v is not None for v in values], pa.bool_())
    return pc.and_(present, pc.invert(pc.is_valid(usable)))


def _strings(values: list[Any]) -> Converted:
    try:
        # the common case: every value a string or null
        return pa.array(values, pa.string()), pa.repeat(False, len(values))
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        pass
    converted: list[str | None] = []
    for v in values:
        if isinstance(v, str):
            converted.append(v)
        elif isinstance(v, bool):
            converted.append("true" if v else "false")
        elif isinstance(v, int | float):
            converted.append(str(v))
        else:
            converted.append(None)
    array = pa.array(converted, pa.string())
    return array, _unusable(values, array)


def _numbers(values: list[Any]) -> Converted:
    # type() rather than isinstance: a bool is an int to isinstance, and not a number here;
    # an int beyond float's range, inf and nan are no numbers to aggregate either
    array = pa.array(
        [
            float(v)
            if (type(v) is float and math.isfinite(v))
            or (type(v) is int and -_FLOAT_INT <= v <= _FLOAT_INT)
            else None
            for v in values
        ],
        pa.float64(),
    )
    return array, _unusable(values, array)


def _integers(values: list[Any]) -> Converted:
    # only JSON integers: pyarrow would silently truncate 19.99 to 19
    ints = [v if type(v) is int and -MAX_INTEGER <= v <= MAX_INTEGER else None for v in values]
    array = pa.array(ints, pa.int64())
    return array, _unusable(values, array)


def _times(values: list[Any]) -> Converted:
    out: list[datetime | None] = []
    for v in values:
        try:
            parsed = datetime.fromisoformat(v) if isinstance(v, str) else None
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is None:
            parsed = None  # a time without an offset is ambiguous
        try:
            out.append(parsed.astimezone(UTC) if parsed is not None else None)
        except OverflowError:  # year 1 with a positive offset is before year 1 in UTC
            out.append(None)
    array = pa.array(out, TIMESTAMP)
    return array, _unusable(values, array)


_FLOAT_INT = 2**1023  # beyond: float() overflows
_CONVERT: dict[str, Callable[[list[Any]], Converted]] = {
    "str": _strings,
    "num": _numbers,
    "int": _integers,
    "time": _times,
}
