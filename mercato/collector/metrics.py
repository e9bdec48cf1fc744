"""The collector's Prometheus metrics, in a registry of its own per app."""

from __future__ import annotations

from typing import get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from mercato.asgi.refusals import Reason

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class CollectorMetrics:
    """``mercato_ingest_*``: events by result, requests by status, durations, batch sizes,
    and what the server refused by itself; ``mercato_collector_quarantined_events_total``:
    Segment messages quarantined, by reason."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "mercato_ingest_events",
            "Events received, by result (accepted, quarantined, invalid, too_large, "
            "unauthorized, overloaded, unavailable).",
            ["result"],
            registry=self.registry,
        )
        self.requests = Counter(
            "mercato_ingest_requests",
            "Ingest requests, by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "mercato_ingest_request_duration_seconds",
            "Time from request start to response, including the durable append.",
            ["endpoint"],
            registry=self.registry,
        )
        self.batch_events = Histogram(
            "mercato_ingest_batch_events",
            "Events per accepted request.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.accepted = self.events.labels("accepted")
        self.quarantined = Counter(
            "mercato_collector_quarantined_events",
            "Segment messages acknowledged into the quarantine instead of the log, by reason "
            "(malformed, schema, merchant_id, timestamp, too_large, too_deep).",
            ["reason"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "mercato_ingest_pending_events",
            "Events decoded and waiting for the log to make them durable.",
            registry=self.registry,
        )
        self.refused = Counter(
            "mercato_ingest_refused",
            "Connections and requests the server answered itself, by reason: shed for "
            "overload, max_connections (503 as accepted, closed) and max_requests_in_flight "
            "(503 after max_queue_seconds waiting); over a header limit, headers_too_large and "
            "too_many_headers (431), header_timeout (408), bad_request (400: not HTTP).",
            ["reason"],
            registry=self.registry,
        )
        for reason in get_args(Reason):  # every series from 0, so rates start at once
            self.refused.labels(reason)

    def refuse(self, reason: Reason) -> None:
        self.refused.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
