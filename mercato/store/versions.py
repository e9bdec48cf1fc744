"""Definitions versions as the store keeps them: register one, read one back, the serving one.

The store keeps each version's definitions as text (its content hash names it); every role
that needs the definitions of a version (the aggregator, the seal, the query API, the
console) reads them back through :func:`definitions_of`.
"""

from __future__ import annotations

from mercato.metrics.definitions import Definitions, parse_definitions
from mercato.names import DROPPED
from mercato.store.base import VersionStore
from mercato.store.errors import DroppedVersionError, UnknownVersionError


def register(store: VersionStore, definitions: Definitions) -> int:
    """The id of ``definitions``' version, registering it if new."""
    return store.register_version(definitions.version, definitions.text)


def definitions_of(store: VersionStore, version: int) -> Definitions:
    """The definitions of a registered version, from the text the store keeps."""
    for known in store.versions():
        if known.id == version:
            if known.state == DROPPED:
                raise DroppedVersionError(version)
            return parse_definitions(known.text, source=f"definitions version {version}")
    raise UnknownVersionError(version)


def serving(store: VersionStore, fallback: Definitions) -> tuple[int, Definitions]:
    """The serving version and its definitions; with none yet, ``fallback`` starts serving."""
    version = store.serving_version()
    if version is None:
        version = register(store, fallback)
        store.set_serving_version(version)
        return version, fallback
    return version, definitions_of(store, version)
