import json

import pytest

from mercato.metrics.definitions import (
    SCHEMA_FILE,
    json_schema,
    load_definitions,
    parse_definitions,
)
from mercato.metrics.errors import DefinitionError


def test_the_default_definitions_load():
    definitions = load_definitions()
    names = set(definitions.metrics)
    for expected in (
        "gross_revenue",
        "orders",
        "refunds",
        "refund_amount",
        "net_revenue",
        "average_order_value",
        "unique_customers",
        "page_views",
        "conversion_rate",
        "api_requests",
        "api_error_rate",
        "api_latency",
    ):
        assert expected in names
    assert definitions.metrics["api_latency"].quantiles == [0.5, 0.95, 0.99]
    assert set(definitions.dimensions) >= {"channel", "country", "payment_method"}


def test_published_schema_matches_the_code():
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema()


def test_version_is_a_content_hash():
    text = "metrics:\n  - {name: orders, kind: count, events: [order_completed]}\n"
    same = (
        "# a comment changes nothing\n"
        "metrics:\n- name: orders\n  kind: count\n  events:\n  - order_completed\n"
    )
    other = text.replace("order_completed", "order_placed")
    assert parse_definitions(text).version == parse_definitions(same).version
    assert parse_definitions(text).version != parse_definitions(other).version


def test_derived_metrics_evaluate_from_their_parts():
    definitions = load_definitions()
    aov = definitions.metrics["average_order_value"]
    assert definitions.dependencies(aov) == ["gross_revenue", "orders"]
    assert definitions.evaluate(aov, {"gross_revenue": 5000, "orders": 4}) == 1250
    assert definitions.evaluate(aov, {"gross_revenue": 5000, "orders": 0}) is None
    assert definitions.evaluate(aov, {"gross_revenue": None, "orders": 3}) is None
    net = definitions.metrics["net_revenue"]
    assert definitions.evaluate(net, {"gross_revenue": 100, "refund_amount": 30}) == 70


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics: [{name: aov, kind: sum, events: [o]}]", "metric 'aov': value:"),
        ("metrics: [{name: aov, kind: count, events: [o], valu: x}]", "metric 'aov': valu:"),
        ("metrics: [{name: Bad-Name, kind: count, events: [o]}]", "name:"),
        ("metrics: [{name: a, kind: avg, events: [o]}]", "metric 'a': kind:"),
        ("metrics: [{name: a, kind: count}]", "metric 'a': events:"),
        (
            "metrics: [{name: a, kind: count, events: [o], dimensions: [x]}]",
            "metric 'a': dimensions",
        ),
        ("metrics: [{name: a, kind: sum, events: [o], value: amount}]", "metric 'a': value:"),
        ("metrics: [{name: a, kind: derived, expression: 'b / 2'}]", "metric 'a': expression:"),
        ("metrics: [{name: a, kind: derived, expression: 'open(1)'}]", "metric 'a': expression:"),
        (
            "metrics: [{name: a, kind: count, events: [o], "
            "where: [{field: properties.s, op: in}]}]",
            "metric 'a': where[0]:",
        ),
        (
            "metrics: [{name: a, kind: count, events: [o]}, {name: a, kind: count, events: [p]}]",
            "repeat: a",
        ),
        ("metrics: [{name: a, kind: count, events: [o], time: sent_at}]", "metric 'a': time"),
        ("metrics: [", "not valid YAML"),
        ("dimensions: []", "metrics"),
    ],
)
def test_invalid_definitions_name_the_metric_and_field(text, message):
    with pytest.raises(DefinitionError) as info:
        parse_definitions(text)
    assert message in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DefinitionError, match="cannot read"):
        load_definitions(tmp_path / "nope.yaml")
