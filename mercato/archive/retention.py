"""How far the consumers that matter have read: retention never deletes records they need.

A log segment may go (see :meth:`mercato.log.file.FileLog.enforce_retention`) only once the
consumers named in ``[log] retention_waits_for`` have passed every record in it: the
aggregator of the serving definitions version (its offsets in the store) and the archiver
(its committed offsets in the archive state). Anything not yet archived can then still be
archived, so the batch layer never misses an event because the log forgot it. A consumer
that never ran holds retention at offset 0: run it, or leave it out of the list.
"""

from __future__ import annotations

from mercato.archive.layout import read_state
from mercato.config import Config
from mercato.log.base import Log, MaintainedLog
from mercato.names import aggregator_consumer
from mercato.store import open_store


def consumed_offsets(config: Config) -> dict[int, int] | None:
    """Per partition, the offset every consumer retention waits for has passed (None when
    retention waits for nobody)."""
    waits = config.log.retention_waits_for
    if not waits:
        return None
    sources: list[dict[int, int]] = []
    if "aggregator" in waits:
        with open_store(config) as store:
            version = store.serving_version()
            hashes = {v.id: v.hash for v in store.versions()}
            consumer = aggregator_consumer(hashes[version]) if version in hashes else None
            sources.append(store.offsets(consumer) if consumer else {})
    if "archiver" in waits:
        sources.append(read_state(config.archive_path).next_offsets())
    return {p: min(s.get(p, 0) for s in sources) for p in range(config.log.partitions)}


def enforce_retention(config: Config, log: Log, now_ms: int | None = None) -> int:
    """Apply the log's retention limits, held back by :func:`consumed_offsets`; a log with no
    retention of its own (Kafka keeps its own) deletes nothing here."""
    if not isinstance(log, MaintainedLog):
        return 0
    return log.enforce_retention(now_ms, consumed=consumed_offsets(config))
