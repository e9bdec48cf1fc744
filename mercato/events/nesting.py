"""How deep JSON goes, and taking a container apart, without recursion.

msgspec, like every recursive parser, stops with ``RecursionError`` at Python's recursion
limit (about a thousand levels, less the caller's stack). Two things follow:

* a request nested that deeply cannot be decoded whole, yet its other events should not pay
  for one bad one: :func:`split` cuts a JSON array or object into the text of its direct
  children, so each can be decoded (and fail) alone;
* what the collector accepts must stay decodable by every consumer, whose stacks differ, so
  events are held to a depth far below the limit (:func:`deeper_than`).

Both scan bytes with one regular expression over strings and structural characters: linear,
iterative, and only run when something is deep or bracket-heavy (a count of brackets bounds
the depth, and is cheap).
"""

from __future__ import annotations

import re
from typing import NamedTuple

# A JSON string (escapes included), or one structural character.
_BRACKETS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]')
_QUOTE, _COMMA, _COLON = ord('"'), ord(","), ord(":")
_OPEN = frozenset(b"[{")
_PLACEHOLDER = b"0"
_BLANK = b" \t\r\n"


def deeper_than(data: bytes, limit: int) -> bool:
    """Whether the JSON text ``data`` nests more than ``limit`` arrays and objects deep.

    ``{"a": [1]}`` is two levels deep. ``data`` is assumed to be valid JSON.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for match in _BRACKETS.finditer(data):
        byte = data[match.start()]
        if byte == _QUOTE:
            continue
        if byte in _OPEN:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class Split(NamedTuple):
    """A JSON container cut into its direct children.

    ``items`` are the children's texts (an object's values; ``keys`` are their keys, as JSON
    string texts). ``frame`` is the container's text with each child replaced by ``0``: the
    original is valid JSON exactly when the frame and every item are, so a caller decodes
    the frame (shallow) and then each item on its own.
    """

    frame: bytes
    items: list[bytes]
    keys: list[bytes]


def split(data: bytes) -> Split | None:
    """Cut the JSON array or object ``data`` into its children; None if ``data`` does not
    open with ``[`` or ``{``, or never closes."""
    begin = len(data) - len(data.lstrip(_BLANK))
    if begin == len(data) or data[begin] not in _OPEN:
        return None
    frame: list[bytes] = []
    items: list[bytes] = []
    keys: list[bytes] = []
    copied = 0  # data[:copied] is in the frame already
    start = -1  # where the current child's text starts
    depth = 0
    last_string = b""
    for match in _STRUCTURE.finditer(data, begin):
        byte = data[match.start()]
        if byte == _QUOTE:
            if depth == 1:
                last_string = match.group()
            continue
        if byte in _OPEN:
            depth += 1
            if depth == 1:
                start = match.end()
            continue
        if depth > 1:
            if byte not in (_COMMA, _COLON):
                depth -= 1
            continue
        if byte == _COLON:
            keys.append(last_string)
            start = match.end()
            continue
        # a comma or the closing bracket at depth 1: the child from `start` ends here
        text = data[start : match.start()]
        item = text.strip(_BLANK)
        if item:
            at = start + len(text) - len(text.lstrip(_BLANK))
            frame.append(data[copied:at])
            frame.append(_PLACEHOLDER)
            items.append(item)
            copied = at + len(item)
        if byte == _COMMA:
            start = match.end()
            continue
        frame.append(data[copied:])
        return Split(b"".join(frame), items, keys)
    return None
