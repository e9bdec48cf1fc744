"""Metric definitions: what to compute from events, declared in one YAML file.

A file declares named ``dimensions`` (event fields to break metrics down by) and ``metrics``:

* ``count`` — events of the listed ``events`` types that pass ``where``;
* ``sum``, ``min``, ``max`` — of an integer ``value`` field (money in minor units, never
  floats);
* ``count_distinct`` — distinct values of ``value`` (an Apache DataSketches HLL sketch);
* ``percentile`` — ``quantiles`` of a numeric ``value`` (a DataSketches KLL sketch);
* ``derived`` — an arithmetic ``expression`` over other metrics (``+ - * /``, numbers,
  metric names), computed at query time from the stored parts, e.g.
  ``gross_revenue / orders``.

Each metric counts an event in the 15-minute UTC bucket of its ``time`` field: ``event_time``
(the default), ``received_at``, or a property holding an RFC 3339 time (a refund counted on
its order's day). Fields are ``type``, ``merchant_id``, ``source``, ``event_id``, or paths into
``properties.`` and ``context.``.

The version of a set of definitions is a hash of its content (not of the file's bytes:
comments and layout do not change it). ``mercato/metrics/definitions.schema.json`` is the
published JSON Schema of the file; errors name the metric and the field.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from mercato.metrics.errors import DefinitionError

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
FieldPath = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(type|merchant_id|source|event_id|event_time|received_at|"
        r"(properties|context)(\.[A-Za-z0-9_$@-]+)+)$",
        description="type, merchant_id, source, event_id, or properties.<path> / context.<path>",
    ),
]
Scalar = str | int | float | bool
Kind = Literal["count", "sum", "min", "max", "count_distinct", "percentile", "derived"]
Op = Literal["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists", "missing"]

MAX_DIMENSIONS = 3
VALUE_KINDS = frozenset({"sum", "min", "max", "count_distinct", "percentile"})
NUMERIC_OPS = frozenset({"gt", "gte", "lt", "lte"})
BUILTIN_TIMES = frozenset({"event_time", "received_at"})
DEFAULT_FILE = Path(__file__).with_name("default.yaml")
SCHEMA_FILE = Path(__file__).with_name("definitions.schema.json")


class Condition(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One ``where`` filter; a metric counts an event only if all its conditions hold."""

    field: FieldPath
    op: Op = "eq"
    value: Scalar | list[Scalar] | None = None


class Dimension(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A field metrics can be broken down by (its values become series: top N + other)."""

    name: Name
    field: FieldPath
    description: str = ""


class Metric(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One metric; which fields apply depends on ``kind`` (see the module docs)."""

    name: Name
    kind: Kind
    description: str = ""
    unit: Literal["count", "money", "ms", "percent", "ratio", "number"] = "count"
    events: list[str] = msgspec.field(default_factory=list)
    value: FieldPath | None = None
    where: list[Condition] = msgspec.field(default_factory=list)
    dimensions: list[Name] = msgspec.field(default_factory=list)
    time: FieldPath = "event_time"
    quantiles: list[Annotated[float, msgspec.Meta(gt=0, lt=1)]] = msgspec.field(
        default_factory=lambda: [0.5, 0.95, 0.99]
    )
    expression: str | None = None

    @property
    def stored(self) -> bool:
        """Whether rollups of this metric are stored (``derived`` ones are computed)."""
        return self.kind != "derived"


class DefinitionsFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole file: ``dimensions`` and ``metrics``."""

    metrics: list[Metric]
    dimensions: list[Dimension] = msgspec.field(default_factory=list)


class Definitions:
    """Validated definitions with their version, as every role uses them."""

    def __init__(self, content: DefinitionsFile) -> None:
        self.content = content
        self.metrics: dict[str, Metric] = {m.name: m for m in content.metrics}
        self.dimensions: dict[str, Dimension] = {d.name: d for d in content.dimensions}
        _check(content, self.metrics, self.dimensions)

    @cached_property
    def version(self) -> str:
        """A hash of the content: equal definitions have equal versions."""
        canonical = msgspec.json.encode(msgspec.to_builtins(self.content), order="sorted")
        return hashlib.sha256(canonical).hexdigest()[:16]

    @cached_property
    def text(self) -> str:
        """The content as JSON: what the store keeps with the version, and what
        :func:`parse_definitions` reads back into equal definitions."""
        return msgspec.json.encode(msgspec.to_builtins(self.content)).decode()

    @property
    def stored(self) -> list[Metric]:
        return [m for m in self.content.metrics if m.stored]

    def dependencies(self, metric: Metric) -> list[str]:
        """The stored metrics a derived metric's expression reads (itself for stored ones)."""
        if metric.stored:
            return [metric.name]
        assert metric.expression is not None
        return sorted(expression_names(metric.expression))

    def evaluate(self, metric: Metric, values: Mapping[str, float | None]) -> float | None:
        """A derived metric's value from its dependencies' values (None on division by 0)."""
        assert metric.expression is not None
        return _evaluate(ast.parse(metric.expression, mode="eval").body, values)


def load_definitions(path: str | Path | None = None) -> Definitions:
    """Read and validate a definitions file (the shipped default when ``path`` is None)."""
    path = Path(path) if path is not None else DEFAULT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DefinitionError(f"cannot read metric definitions {path}: {exc.strerror}") from None
    return parse_definitions(text, source=str(path))


def parse_definitions(text: str, source: str = "<definitions>") -> Definitions:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DefinitionError(f"{source} is not valid YAML: {exc}") from None
    try:
        content = msgspec.convert(raw, DefinitionsFile)
    except msgspec.ValidationError as exc:
        raise DefinitionError(f"{source}: {_name_metric(str(exc), raw)}") from None
    try:
        return Definitions(content)
    except DefinitionError as exc:
        raise DefinitionError(f"{source}: {exc}") from None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a definitions file."""
    schema: dict[str, Any] = msgspec.json.schema(DefinitionsFile)
    schema["$id"] = "https://mercato.invalid/schemas/definitions.schema.json"
    schema["title"] = "Mercato metric definitions"
    return schema


_INDEXED = re.compile(r"^\$\.(?P<list>metrics|dimensions)\[(?P<index>\d+)\]\.?(?P<rest>.*)$")


def _name_metric(message: str, raw: object) -> str:
    """msgspec's ``... - at `$.metrics[3].value``` as ``metric 'aov': value: ...``."""
    head, sep, where = message.rpartition(" - at `")
    if not sep:
        return message
    where = where.rstrip("`")
    match = _INDEXED.match(where)
    if match is None:
        return f"{where.removeprefix('$.') or 'file'}: {head}"
    items = raw.get(match["list"]) if isinstance(raw, dict) else None
    index = int(match["index"])
    item = items[index] if isinstance(items, list) and index < len(items) else None
    label = item.get("name") if isinstance(item, dict) else None
    what = "metric" if match["list"] == "metrics" else "dimension"
    who = f"{what} {label!r}" if isinstance(label, str) else f"{what} #{index + 1}"
    field = match["rest"]
    if head.startswith("Object missing required field"):
        field, head = ".".join(filter(None, [field, head.split("`")[1]])), "required"
    elif head.startswith("Object contains unknown field"):
        field, head = ".".join(filter(None, [field, head.split("`")[1]])), "unknown field"
    return f"{who}: {field + ': ' if field else ''}{head}"


def _check(
    content: DefinitionsFile, metrics: dict[str, Metric], dimensions: dict[str, Dimension]
) -> None:
    if len(metrics) != len(content.metrics):
        raise DefinitionError(f"metric names repeat: {_repeats(m.name for m in content.metrics)}")
    if len(dimensions) != len(content.dimensions):
        raise DefinitionError(
            f"dimension names repeat: {_repeats(d.name for d in content.dimensions)}"
        )
    for metric in content.metrics:
        _check_metric(metric, metrics, dimensions)


def _repeats(names: Iterable[str]) -> str:
    return ", ".join(sorted(name for name, n in Counter(names).items() if n > 1))


def _check_metric(
    metric: Metric, metrics: dict[str, Metric], dimensions: dict[str, Dimension]
) -> None:
    def fail(field: str, problem: str) -> DefinitionError:
        return DefinitionError(f"metric {metric.name!r}: {field}: {problem}")

    if metric.kind == "derived":
        if metric.expression is None:
            raise fail("expression", "a derived metric needs an expression")
        for field in ("events", "value", "where", "dimensions"):
            if getattr(metric, field):
                raise fail(field, "a derived metric takes its inputs from its expression")
        try:
            names = expression_names(metric.expression)
        except ValueError as exc:
            raise fail("expression", str(exc)) from None
        for name in sorted(names):
            if name not in metrics:
                raise fail("expression", f"no metric named {name!r}")
            if not metrics[name].stored:
                raise fail("expression", f"{name!r} is derived; use stored metrics only")
            if metrics[name].kind == "percentile":
                raise fail("expression", f"{name!r} is a percentile, not one number")
        return
    if metric.expression is not None:
        raise fail("expression", f"only derived metrics have one, not {metric.kind}")
    if not metric.events:
        raise fail("events", "name at least one event type")
    if metric.kind in VALUE_KINDS and metric.value is None:
        raise fail("value", f"a {metric.kind} metric needs the field to aggregate")
    if metric.kind == "count" and metric.value is not None:
        raise fail("value", "a count metric counts events; use count_distinct for values")
    if len(metric.dimensions) > MAX_DIMENSIONS:
        raise fail("dimensions", f"at most {MAX_DIMENSIONS}")
    for name in metric.dimensions:
        if name not in dimensions:
            raise fail("dimensions", f"no dimension named {name!r}")
    if metric.time not in BUILTIN_TIMES and not metric.time.startswith("properties."):
        raise fail("time", "event_time, received_at or a properties.<field> holding a time")
    for i, condition in enumerate(metric.where):
        _check_condition(condition, lambda problem, i=i: fail(f"where[{i}]", problem))


def _check_condition(condition: Condition, fail: Any) -> None:
    value = condition.value
    if condition.op in ("exists", "missing"):
        if value is not None:
            raise fail(f"{condition.op} takes no value")
    elif condition.op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise fail(f"{condition.op} needs a list of values")
    elif value is None or isinstance(value, list):
        raise fail(f"{condition.op} needs one value")
    elif condition.op in NUMERIC_OPS and (
        isinstance(value, bool) or not isinstance(value, int | float)
    ):
        raise fail(f"{condition.op} compares numbers")


_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub, ast.UAdd)


def expression_names(expression: str) -> set[str]:
    """The metric names an expression uses; raises ValueError if it is not plain arithmetic."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an expression: {exc.msg}") from None
    names: set[str] = set()
    for node in ast.walk(tree.body):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise ValueError(f"only numbers and metric names, not {node.value!r}")
        elif isinstance(node, ast.BinOp | ast.UnaryOp):
            if not isinstance(node.op, _OPERATORS):
                raise ValueError("only + - * / on numbers and metric names")
        elif not isinstance(node, ast.Load | ast.operator | ast.unaryop):
            raise ValueError("only + - * / on numbers and metric names")
    if not names:
        raise ValueError("names no metric")
    return names


def _evaluate(node: ast.expr, values: Mapping[str, float | None]) -> float | None:
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float)
        return float(node.value)
    if isinstance(node, ast.Name):
        return values.get(node.id)
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values)
        return None if operand is None else (-operand if isinstance(node.op, ast.USub) else operand)
    assert isinstance(node, ast.BinOp)
    left, right = _evaluate(node.left, values), _evaluate(node.right, values)
    if left is None or right is None:
        return None
    if isinstance(node.op, ast.Add):
        return left + right
    if isinstance(node.op, ast.Sub):
        return left - right
    if isinstance(node.op, ast.Mult):
        return left * right
    return left / right if right else None
