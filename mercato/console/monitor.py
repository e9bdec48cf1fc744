"""What the operator console shows, gathered from the log, the store, the archive and the
collector: consumers' lag per partition, freshness, archive coverage, and ingest rates.

Everything here reads across merchants, so only admin endpoints call it
(:mod:`mercato.console.api`). Each function takes the collaborators it reads; none writes
anything.

Ingest rates come from two places: the log's end offsets (every event any collector made
durable) and the Prometheus counters of the collector at ``[collector] host:port`` (events by
result and requests by status, for error rates). Neither keeps history, so
:class:`IngestMonitor` samples both every few seconds and keeps the last hour in memory: the
console's chart starts when the API process does.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from mercato.archive.layout import Root, committed_files, read_state
from mercato.batch.drift import invalid_values
from mercato.errors import MercatoError
from mercato.log.base import Log
from mercato.names import (
    DRIFT_CHECKED_AT,
    DRIFT_PPM,
    DROPPED,
    SEALED_THROUGH,
    aggregator_consumer,
)
from mercato.store.base import Store

ARCHIVER = "archiver"


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def consumer_offsets(store: Store, archive: Root | None) -> dict[str, dict[int, int]]:
    """Every consumer's next offset per partition: each live version's aggregator
    (``aggregator/<hash>``) and the archiver (its committed state)."""
    consumers = {}
    for version in store.versions():
        if version.state != DROPPED:
            consumers[aggregator_consumer(version.hash)] = store.offsets(
                aggregator_consumer(version.hash)
            )
    if archive is not None:
        try:
            consumers[ARCHIVER] = read_state(archive).next_offsets()
        except MercatoError:
            consumers[ARCHIVER] = {}
    return consumers


def pipeline(store: Store, log: Log | None, archive: Root | None, now: float) -> dict[str, Any]:
    """Log offsets, each consumer's lag per partition, and how fresh each layer is."""
    serving = store.serving_version()
    hashes = {v.id: v.hash for v in store.versions()}
    consumers = consumer_offsets(store, archive)
    partitions: list[dict[str, Any]] = []
    newest_ms: int | None = None
    if log is not None:
        for stats in log.stats():
            partitions.append(
                {
                    "partition": stats.partition,
                    "start_offset": stats.start_offset,
                    "end_offset": stats.end_offset,
                    "size_bytes": stats.size_bytes,
                    "newest_at": _iso(
                        None if stats.newest_timestamp_ms is None
                        else stats.newest_timestamp_ms / 1000
                    ),
                }
            )  # fmt: skip
            if stats.newest_timestamp_ms is not None:
                newest_ms = max(newest_ms or 0, stats.newest_timestamp_ms)
    rows = []
    for name, offsets in consumers.items():
        lag = {}
        for p in partitions:
            done = offsets.get(p["partition"])
            position = p["start_offset"] if done is None else max(done, p["start_offset"])
            lag[str(p["partition"])] = max(p["end_offset"] - position, 0)
        version = next((v for v, h in hashes.items() if name == aggregator_consumer(h)), None)
        rows.append(
            {
                "consumer": name,
                "version": version,
                "serving": version is not None and version == serving,
                "offsets": {str(k): v for k, v in sorted(offsets.items())},
                "lag": lag,
                "total_lag": sum(lag.values()),
            }
        )
    marks: dict[str, int | None] = {}
    if serving is not None:
        for mark in (SEALED_THROUGH, DRIFT_PPM, DRIFT_CHECKED_AT):
            marks[mark] = store.watermark(mark, serving)
    archived = None
    if archive is not None:
        try:
            watermark = read_state(archive).watermark()
            archived = None if watermark is None else watermark.isoformat()
        except MercatoError:
            archived = None
    drift = marks.get(DRIFT_PPM)
    return {
        "now": _iso(now),
        "serving_version": serving,
        # per metric, events of the last 24 hours it matched but could not use
        "invalid_values": {} if serving is None else invalid_values(store, serving, now),
        "partitions": partitions,
        "consumers": rows,
        "freshness": {
            "newest_event_at": _iso(None if newest_ms is None else newest_ms / 1000),
            "archived_through": archived,
            "sealed_through": _iso(marks.get(SEALED_THROUGH)),
            "drift_ratio": None if drift is None else drift / 1_000_000,
            "drift_checked_at": _iso(marks.get(DRIFT_CHECKED_AT)),
        },
    }


def archive_summary(store: Store, archive: Root, now: float, days: int) -> dict[str, Any]:
    """Files and bytes of the committed archive, and per UTC hour of the last ``days`` days
    whether it holds files and whether the serving version sealed it."""
    files = committed_files(archive)
    state = read_state(archive)
    serving = store.serving_version()
    sealed = set(store.sealed_hours(serving)) if serving is not None else set()
    per_hour: dict[int, list[int]] = {}
    for f in files:
        cell = per_hour.setdefault(int(f.hour.timestamp()), [0, 0])
        cell[0] += 1
        cell[1] += f.size
    last = int(now) - int(now) % 3600
    first = last - (days * 24 - 1) * 3600
    hours = [
        {
            "hour": _iso(h),
            "files": per_hour.get(h, [0, 0])[0],
            "bytes": per_hour.get(h, [0, 0])[1],
            "sealed": h in sealed,
        }
        for h in range(first, last + 1, 3600)
    ]
    return {
        "files": len(files),
        "bytes": sum(f.size for f in files),
        "hours_archived": len(per_hour),
        "first_hour": _iso(min(per_hour)) if per_hour else None,
        "last_hour": _iso(max(per_hour)) if per_hour else None,
        "partitions": [
            {
                "partition": p,
                "next_offset": s.next_offset,
                "watermark": None if s.watermark is None else s.watermark.isoformat(),
            }
            for p, s in sorted(state.partitions.items())
        ],
        "hours": hours,
    }


class Sample(msgspec.Struct, frozen=True):
    """One reading: the log's total end offset and each collector's counters."""

    at: float
    log_end: int | None
    events: dict[str, dict[str, float]]  # per collector: mercato_ingest_events_total by result
    requests: dict[str, dict[str, float]]  # per collector: ..._requests_total by status
    error: str | None = None

    def total(self, counters: str) -> dict[str, float]:
        """``events`` or ``requests`` summed over the collectors."""
        out: dict[str, float] = {}
        for by_key in getattr(self, counters).values():
            for key, value in by_key.items():
                out[key] = out.get(key, 0.0) + value
        return out


def scrape(host: str, port: int, timeout: float = 2.0) -> tuple[dict[str, float], dict[str, float]]:
    """The collector's event and request counters, by result and by HTTP status."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
    finally:
        connection.close()
    if response.status != 200:
        raise OSError(f"the collector's /metrics answered {response.status}")
    events: dict[str, float] = {}
    requests: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mercato_ingest_events_total":
                key = sample.labels.get("result", "")
                events[key] = events.get(key, 0.0) + sample.value
            elif sample.name == "mercato_ingest_requests_total":
                key = sample.labels.get("status", "")
                requests[key] = requests.get(key, 0.0) + sample.value
    return events, requests


def _delta(
    now: Mapping[str, Mapping[str, float]],
    before: Mapping[str, Mapping[str, float]],
    keys: Callable[[str], bool],
) -> float:
    """How much the counters named by ``keys`` grew, collector by collector (a collector's
    restart resets its counters: then all it counted since counts)."""
    total = 0.0
    for target, counters in now.items():
        earlier = before.get(target, {})
        for key, value in counters.items():
            if keys(key):
                previous = earlier.get(key, 0.0)
                total += value - previous if value >= previous else value
    return total


class IngestMonitor:
    """Samples ingest every ``interval`` seconds (in a thread, or when asked) and keeps an
    hour of samples; :meth:`series` turns them into rates."""

    def __init__(
        self,
        log: Callable[[], Log | None],
        collectors: Sequence[tuple[str, int]],
        *,
        interval: float = 5.0,
        keep_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log = log
        self._collectors = [f"{host}:{port}" for host, port in collectors]
        self.interval = interval
        self._clock = clock
        self._samples: deque[Sample] = deque(maxlen=max(2, int(keep_seconds / interval)))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> Sample:
        now = self._clock()
        log_end = None
        error = None
        try:
            log = self._log()
            if log is not None:
                log_end = sum(log.end_offset(p) for p in range(log.partitions))
        except MercatoError as exc:
            error = f"log: {exc}"
        events: dict[str, dict[str, float]] = {}
        requests: dict[str, dict[str, float]] = {}
        failed = []
        for target in self._collectors:
            host, _, port = target.rpartition(":")
            try:
                events[target], requests[target] = scrape(host, int(port))
            except OSError as exc:  # the others still count
                failed.append(f"collector at {target}: {exc or type(exc).__name__}")
        if failed:
            error = "; ".join(filter(None, [error, *failed]))
        reading = Sample(now, log_end, events, requests, error)
        with self._lock:
            self._samples.append(reading)
        return reading

    def sample_if_due(self) -> None:
        with self._lock:
            last = self._samples[-1].at if self._samples else None
        if last is None or self._clock() - last >= self.interval:
            self.sample()

    def start(self) -> None:
        """Sample in a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ingest-monitor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_if_due()
            self._stop.wait(self.interval)

    def series(self) -> dict[str, Any]:
        """Per interval between samples: events/s appended to the log, accepted and
        rejected by the collector, and requests/s answered 4xx and 5xx."""
        with self._lock:
            samples = list(self._samples)
        points = []
        for before, now in itertools.pairwise(samples):
            seconds = now.at - before.at
            if seconds <= 0:
                continue
            appended = (
                None
                if now.log_end is None or before.log_end is None
                else max(now.log_end - before.log_end, 0) / seconds
            )
            scraped = any(now.events.values()) or any(now.requests.values())

            def rate(
                delta: float, scraped: bool = scraped, seconds: float = seconds
            ) -> float | None:
                return round(delta / seconds, 3) if scraped else None

            points.append(
                {
                    "at": _iso(now.at),
                    "log_events_per_second": None if appended is None else round(appended, 3),
                    "accepted_per_second": rate(
                        _delta(now.events, before.events, lambda k: k == "accepted")
                    ),
                    "rejected_per_second": rate(
                        _delta(now.events, before.events, lambda k: k != "accepted")
                    ),
                    "client_errors_per_second": rate(
                        _delta(now.requests, before.requests, lambda k: k.startswith("4"))
                    ),
                    "server_errors_per_second": rate(
                        _delta(now.requests, before.requests, lambda k: k.startswith("5"))
                    ),
                }
            )
        latest = samples[-1] if samples else None
        return {
            "collector": ", ".join(self._collectors),
            "collectors": list(self._collectors),
            "interval_seconds": self.interval,
            "error": latest.error if latest else None,
            "totals": {
                "log_events": latest.log_end if latest else None,
                "events": latest.total("events") if latest else {},
                "requests": latest.total("requests") if latest else {},
            },
            "points": points,
        }
