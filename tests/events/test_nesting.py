"""JSON taken apart and measured without recursion, checked against msgspec's own decoder."""

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mercato.events.nesting import deeper_than, split

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab,:[]{}"\\ \n\u00e9\U0001f600')),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(alphabet='k,:[]{}"\\'), inner, max_size=4)
    ),
    max_leaves=12,
)


def depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@settings(max_examples=300)
@given(value=json_values, indent=st.sampled_from([None, 2]))
def test_split_gives_the_children_and_a_frame(value, indent):
    if indent is None:
        text = msgspec.json.encode(value)
    else:
        text = msgspec.json.format(msgspec.json.encode(value), indent=indent)
    parts = split(b" " + text + b"\n")
    if not isinstance(value, list | dict):
        assert parts is None
        return
    assert parts is not None
    children = list(value.values()) if isinstance(value, dict) else value
    assert [msgspec.json.decode(item) for item in parts.items] == children
    if isinstance(value, dict):
        assert [msgspec.json.decode(key) for key in parts.keys] == list(value)
    frame = msgspec.json.decode(parts.frame)
    assert (list(frame.values()) if isinstance(frame, dict) else frame) == [0] * len(children)


@pytest.mark.parametrize("text", [b"[1,,2]", b'{"a":}', b"[1 2]", b'["a]', b"[1", b"x", b""])
def test_invalid_json_gives_no_frame_or_an_invalid_part(text):
    parts = split(text)
    if parts is None:
        return
    valid = []
    for part in [parts.frame, *parts.items]:
        try:
            msgspec.json.decode(part)
            valid.append(True)
        except msgspec.DecodeError:
            valid.append(False)
    assert not all(valid)


def test_split_needs_no_recursion():
    deep = b"[" * 100_000 + b"]" * 100_000
    parts = split(b'{"batch": [{"a": 1}, ' + deep + b"]}")
    assert parts is not None
    assert parts.keys == [b'"batch"']
    inner = split(parts.items[0])
    assert inner is not None
    assert inner.items == [b'{"a": 1}', deep]


@settings(max_examples=300)
@given(value=json_values)
def test_deeper_than_measures_depth(value):
    text = msgspec.json.encode(value)
    actual = depth(value)
    assert not deeper_than(text, actual)
    assert deeper_than(text, actual - 1) == (actual > 0)
    assert not deeper_than(text, actual + 5)


def test_deeper_than_is_iterative():
    assert deeper_than(b"[" * 100_000 + b"]" * 100_000, 64)
    assert not deeper_than(b'["' + b"[" * 1000 + b'"]', 1)  # brackets in strings do not count
