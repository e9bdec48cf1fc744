"""The merchant query API (ASGI, Starlette). OpenAPI at ``/openapi.json``, docs at ``/docs``.

Merchant endpoints take a merchant token (``Authorization: Bearer mt_…``) and read only that
merchant's data: the merchant comes from the token, never from a parameter, and every read
goes through a :class:`~mercato.query.series.MerchantView` bound to it. A metric that does
not exist answers 404 the same way for everyone. Admin endpoints take the admin token.

Every request's cost is bounded before its work starts: ranges lie in ``[EARLIEST, LATEST)``
(:mod:`mercato.metrics.periods`), a series has at most ``max_points`` periods (so each
granularity has a longest range), an overview at most ``max_points`` days. The work itself
(store reads, folding) runs on a few worker threads (:class:`Offload`), never on the event
loop, so one slow request cannot hold the others; when too many wait, the API answers 503.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol, TypeVar, cast
from zoneinfo import ZoneInfo

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from mercato.asgi.errors import ApiError
from mercato.batch.drift import invalid_values
from mercato.config import ApiConfig
from mercato.metrics.definitions import Definitions, Metric
from mercato.metrics.errors import TooManyPeriods
from mercato.metrics.periods import (
    EARLIEST,
    GRANULARITIES,
    LATEST,
    local_midnight,
    max_range,
    periods,
)
from mercato.names import DRIFT_CHECKED_AT, DRIFT_PPM, SEALED_THROUGH
from mercato.query.errors import TokenError
from mercato.query.openapi import DOCS_HTML, openapi
from mercato.query.series import MerchantView, Series, timeseries
from mercato.query.tokens import TokenSigner
from mercato.store.base import BatchStore, DayStore, RollupStore, VersionStore, check_timezone
from mercato.store.errors import StoreError, StoreUnavailableError
from mercato.store.versions import definitions_of

CACHE_SECONDS = 1.0
ZONE_SLACK = timedelta(days=1)  # the ends of the range are local days in any zone
MAX_OVERVIEW_METRICS = 50
MAX_MERCHANT_ID = 256  # as the collector accepts them
MAX_BODY_BYTES = 64 * 1024  # the admin endpoints' JSON bodies are a few fields
Handler = Callable[[Request], Response | Awaitable[Response]]
T = TypeVar("T")


class ApiStore(RollupStore, VersionStore, BatchStore, DayStore, Protocol):
    """What the query API reads and sets in the store: a merchant's rows, the serving version
    and its watermarks, merchants' time zones, and invalid totals for ``/metrics``."""


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status, headers, media_type="application/json")


class RateLimiter:
    """A token bucket per merchant: ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens < 1:
                wait = max(1, int((1 - tokens) / self.rate + 0.999))
                self._buckets[key] = (tokens, now)
                raise ApiError(429, "rate_limited", "too many requests", retry_after=wait)
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > 100_000:  # forget idle merchants
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}


class Offload:
    """Runs request work on ``threads`` worker threads, off the event loop; when ``threads +
    queue`` requests are in flight already, a new one is refused with 503 at once."""

    def __init__(self, threads: int, queue: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mercato-api")
        self._limit = threads + queue
        self._in_flight = 0  # changed on the event loop's thread only

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        if self._in_flight >= self._limit:
            raise ApiError(503, "busy", "too many requests in progress; retry", retry_after=1)
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, work, *args)
        finally:
            self._in_flight -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class QueryApi:
    """Everything a request needs: store, definitions, token signer, limits.

    Merchant endpoints are plain functions that :meth:`guard` runs on the :class:`Offload`
    threads: store reads are short indexed scans, but folding a long range or many members
    is CPU work, and on the event loop it would hold every other merchant's request.
    """

    def __init__(
        self,
        config: ApiConfig,
        store: ApiStore,
        definitions: Definitions,
        signer: TokenSigner,
        admin_token: str,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.store = store
        self.definitions = definitions  # until a version serves; then the serving version's
        self._versions: dict[int, Definitions] = {}
        self.signer = signer
        self._admin_token = admin_token
        self._clock = clock
        self.limiter = RateLimiter(config.rate_limit_per_second, config.rate_limit_burst)
        self.offload = Offload(config.threads, config.max_queued)
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self.app = Starlette(
            routes=[
                Route("/v1/metrics", self.guard(self.catalogue)),
                Route("/v1/metrics/{name}", self.guard(self.metric)),
                Route("/v1/overview", self.guard(self.overview)),
                Route("/v1/admin/tokens", self.guard(self.issue_token), methods=["POST"]),
                Route(
                    "/v1/admin/merchants/{merchant_id}/timezone",
                    self.guard(self.set_timezone),
                    methods=["PUT"],
                ),
                Route("/livez", lambda _: _json({"status": "ok"})),
                Route("/metrics", self.guard(self.prometheus)),
                Route("/openapi.json", lambda _: _json(openapi())),
                Route("/docs", lambda _: HTMLResponse(DOCS_HTML)),
            ]
        )

    # -- plumbing -----------------------------------------------------------------------------

    def guard(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` with :class:`ApiError` answered as a JSON error, and a store that
        cannot be reached as 503 with Retry-After. A plain function runs on the
        :class:`Offload` threads; a coroutine function on the event loop (it must offload
        its own blocking work)."""
        coroutine = cast(Callable[[Request], Awaitable[Response]], handler)
        function = cast(Callable[[Request], Response], handler)
        run_async = inspect.iscoroutinefunction(handler)

        async def endpoint(request: Request) -> Response:
            try:
                try:
                    if run_async:
                        return await coroutine(request)
                    return await self.offload.run(function, request)
                except StoreUnavailableError as exc:  # the database is away: come back later
                    raise ApiError(503, "store_unavailable", str(exc), retry_after=1) from None
            except ApiError as exc:
                headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
                if exc.status == 401:
                    headers = {"WWW-Authenticate": 'Bearer realm="mercato"'}
                body = {"error": {"code": exc.code, "message": exc.message}}
                return _json(body, exc.status, headers)

        return endpoint

    def _bearer(self, request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "send a token: Authorization: Bearer <token>")
        if not token.isascii():  # every token is ASCII; compare_digest refuses other text
            raise ApiError(401, "unauthorized", "malformed token")
        return token.strip()

    def _merchant(self, request: Request) -> MerchantView:
        try:
            merchant = self.signer.verify(self._bearer(request))
        except TokenError as exc:
            raise ApiError(401, "unauthorized", str(exc)) from None
        self.limiter.check(merchant)
        version = self._cached(("version", ""), self.store.serving_version)
        if version is None:
            return MerchantView(self.store, -1, merchant, None, self.definitions)
        # keyed by version, so a promote never pairs one version with another's watermark
        # or definitions
        sealed = self._cached(
            ("sealed_through", str(version)),
            lambda: self.store.watermark(SEALED_THROUGH, version),
        )
        definitions = self._versions.get(version)
        if definitions is None:
            definitions = self._versions[version] = definitions_of(self.store, version)
        return MerchantView(self.store, version, merchant, sealed, definitions)

    def definitions_of(self, version: int) -> Definitions:
        """The definitions of a version (read once: a version's definitions never change)."""
        definitions = self._versions.get(version)
        if definitions is None:
            definitions = self._versions[version] = definitions_of(self.store, version)
        return definitions

    def add_routes(self, routes: Sequence[BaseRoute]) -> None:
        """Serve ``routes`` too (the operator endpoints, the dashboards)."""
        self.app.router.routes.extend(routes)

    def _cached(self, key: tuple[str, str], load: Callable[[], Any]) -> Any:
        """``load()``, reused for a second: the serving version and merchants' zones change
        rarely, and reading them costs as much as a small series."""
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        value = load()
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = (now, value)
        return value

    def require_admin(self, request: Request) -> None:
        if not hmac.compare_digest(self._bearer(request), self._admin_token):
            raise ApiError(403, "forbidden", "this endpoint needs the admin token")

    def _metric(self, view: MerchantView, name: str) -> Metric:
        metric = view.definitions.metrics.get(name)
        if metric is None:
            raise ApiError(404, "not_found", f"no metric named {name!r}")
        return metric

    # -- merchant endpoints -------------------------------------------------------------------

    def catalogue(self, request: Request) -> Response:
        view = self._merchant(request)
        definitions = view.definitions
        metrics = [
            {
                "name": m.name,
                "kind": m.kind,
                "unit": m.unit,
                "description": m.description,
                "dimensions": m.dimensions,
                **({"quantiles": m.quantiles} if m.kind == "percentile" else {}),
            }
            for m in definitions.content.metrics
        ]
        zone = self._zone(view, None).key
        return _json({"version": definitions.version, "tz": zone, "metrics": metrics})

    def metric(self, request: Request) -> Response:
        view = self._merchant(request)
        metric = self._metric(view, request.path_params["name"])
        query = request.query_params
        zone = self._zone(view, query.get("tz"))
        granularity = query.get("granularity", "day")
        if granularity not in GRANULARITIES:
            raise ApiError(400, "invalid_parameter", f"granularity: one of {GRANULARITIES}")
        start, end = self._range(query.get("from"), query.get("to"), zone)
        group_by = query.get("group_by") or None
        if group_by is not None and group_by not in metric.dimensions:
            raise ApiError(
                400,
                "invalid_parameter",
                f"group_by: {metric.name} has dimensions {metric.dimensions or 'none'}",
            )
        compare = query.get("compare") or None
        if compare not in (None, "previous_period", "previous_year"):
            raise ApiError(400, "invalid_parameter", "compare: previous_period or previous_year")
        top = self._int(query.get("top"), "top", self.config.top)
        body = self._series_body(view, metric, start, end, granularity, zone, group_by, top)
        if compare is not None:
            before_start, before_end = _shifted(start, end, compare, zone)
            if before_start < EARLIEST - ZONE_SLACK:
                raise ApiError(
                    400,
                    "out_of_range",
                    f"compare: the {compare.replace('_', ' ')} would start before "
                    f"{EARLIEST.date()}, the earliest time the API answers for",
                )
            before = self._series_body(
                view, metric, before_start, before_end, granularity, zone, group_by, top
            )
            body["compare"] = {
                "kind": compare,
                **{key: before[key] for key in ("from", "to", "periods", "series")},
            }
        return _json(body)

    def _series_body(
        self,
        view: MerchantView,
        metric: Metric,
        start: datetime,
        end: datetime,
        granularity: str,
        zone: ZoneInfo,
        group_by: str | None,
        top: int,
    ) -> dict[str, Any]:
        limit = self.config.max_points
        try:
            bounds = periods(start, end, granularity, zone, limit)
        except TooManyPeriods as exc:
            raise ApiError(
                400,
                "too_many_points",
                f"{exc}: a {granularity} series spans at most about "
                f"{_describe(max_range(granularity, limit))}; use a coarser granularity or a "
                "shorter range",
            ) from None
        # day rows are days of the merchant's own zone: usable for whole local days there
        own_zone = self._zone(view, None).key == zone.key
        by_day = granularity in ("day", "week", "month") and own_zone
        series = timeseries(view, view.definitions, metric, bounds, group_by, top, by_day)
        return {
            "metric": metric.name,
            "kind": metric.kind,
            "unit": metric.unit,
            "granularity": granularity,
            "tz": zone.key,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "complete_through": _complete_through(view, zone),
            "periods": [datetime.fromtimestamp(b, zone).isoformat() for b in bounds[:-1]],
            "series": [_series_json(s, view, bounds, metric) for s in series],
            # events the metric matched in the range but could not use (a value of the wrong
            # kind): left out of the values, never silently
            "invalid": sum(s.invalid for s in series),
        }

    def overview(self, request: Request) -> Response:
        view = self._merchant(request)
        zone = self._zone(view, request.query_params.get("tz"))
        start, end = self._range(
            request.query_params.get("from"), request.query_params.get("to"), zone
        )
        if (end - start).days > self.config.max_points:
            raise ApiError(
                400,
                "too_many_points",
                f"an overview spans at most {self.config.max_points} days; use a shorter range",
            )
        names = self.config.overview
        if chosen := request.query_params.get("metrics"):
            names = [name for name in chosen.split(",") if name][:MAX_OVERVIEW_METRICS]
            for name in names:
                self._metric(view, name)
        body = self._overview_body(view, zone, start, end, names)
        return _json(body)

    def _overview_body(
        self,
        view: MerchantView,
        zone: ZoneInfo,
        start: datetime,
        end: datetime,
        names: Sequence[str],
    ) -> dict[str, Any]:
        before_start, before_end = _shifted(start, end, "previous_period", zone)
        now, then = _epochs(start, end), _epochs(before_start, before_end)
        has_previous = before_start >= EARLIEST - ZONE_SLACK  # nothing is stored before
        # whole local days of the merchant's own zone read its day rows
        by_day = self._zone(view, None).key == zone.key and all(
            _is_midnight(at, zone) for at in (start, end)
        )
        kpis = []
        for name in names:
            metric = view.definitions.metrics.get(name)
            if metric is None or metric.kind == "percentile":
                continue
            current = timeseries(view, view.definitions, metric, now, by_day=by_day)[0]
            value = current.values[0]
            previous = (
                timeseries(view, view.definitions, metric, then, by_day=by_day)[0].values[0]
                if has_previous
                else None
            )
            change = (
                round((value - previous) / previous, 4)
                if isinstance(value, int | float) and isinstance(previous, int | float) and previous
                else None
            )
            kpis.append(
                {"metric": name, "unit": metric.unit, "value": value, "previous": previous,
                 "change": change, "provisional": not view.is_final(now[-1]),
                 "invalid": current.invalid,
                 "overflow": metric.kind == "sum" and value is None}
            )  # fmt: skip
        return {
            "tz": zone.key,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "complete_through": _complete_through(view, zone),
            "kpis": kpis,
        }

    # -- operations ---------------------------------------------------------------------------

    def prometheus(self, request: Request) -> Response:
        """Gauges of the batch layer for Prometheus (no merchant data: safe to scrape)."""
        lines = []
        version = self.store.serving_version()
        if version is not None:
            marks = {
                name: self.store.watermark(name, version)
                for name in (SEALED_THROUGH, DRIFT_PPM, DRIFT_CHECKED_AT)
            }
            drift = marks[DRIFT_PPM]
            gauges = [
                ("mercato_serving_version", "The definitions version the API serves.", version),
                ("mercato_sealed_through_seconds",
                 "Epoch seconds before which every bucket is final.", marks[SEALED_THROUGH]),
                ("mercato_drift_ratio", "Speed vs final difference of recently sealed hours.",
                 None if drift is None else drift / 1_000_000),
                ("mercato_drift_checked_seconds", "When the drift was last checked (epoch s).",
                 marks[DRIFT_CHECKED_AT]),
            ]  # fmt: skip
            for name, text, value in gauges:
                if value is not None:
                    lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {value}"]
            counts = invalid_values(self.store, version, self._clock().timestamp())
            name = "mercato_invalid_values"
            lines += [
                f"# HELP {name} Events of the last 24 hours a metric matched but could not use "
                "(a value of the wrong kind; see `mercato invalid`).",
                f"# TYPE {name} gauge",
                *(
                    f'{name}{{metric="{metric.name}"}} {counts.get(metric.name, 0)}'
                    for metric in self.definitions_of(version).stored
                ),
            ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    # -- admin endpoints ----------------------------------------------------------------------

    async def issue_token(self, request: Request) -> Response:
        self.require_admin(request)
        try:
            body = msgspec.json.decode(await _body(request), type=dict[str, Any])
        except msgspec.DecodeError:
            raise ApiError(400, "invalid_body", "send JSON {merchant_id, ttl_seconds?}") from None
        merchant = body.get("merchant_id")
        ttl = body.get("ttl_seconds", self.config.token_ttl_seconds)
        if not isinstance(merchant, str) or not 0 < len(merchant) <= MAX_MERCHANT_ID:
            raise ApiError(400, "invalid_body", "merchant_id: a string of 1 to 256 characters")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
            raise ApiError(400, "invalid_body", "ttl_seconds: a positive integer")
        token, expires = self.signer.issue(merchant, ttl)
        return _json({"token": token, "merchant_id": merchant, "expires_at": expires})

    async def set_timezone(self, request: Request) -> Response:
        self.require_admin(request)
        try:
            body = msgspec.json.decode(await _body(request), type=dict[str, Any])
            zone = check_timezone(str(body.get("timezone", "")))
        except (msgspec.DecodeError, StoreError) as exc:
            raise ApiError(400, "invalid_body", f"timezone: {exc}") from None
        merchant = request.path_params["merchant_id"]
        if len(merchant) > MAX_MERCHANT_ID:
            raise ApiError(400, "invalid_parameter", "merchant_id: at most 256 characters")
        await self.offload.run(self.store.set_merchant_timezone, merchant, zone)
        self._cache.pop(("zone", merchant), None)
        return _json({"merchant_id": merchant, "timezone": zone})

    # -- parameters ---------------------------------------------------------------------------

    def _zone(self, view: MerchantView, name: str | None) -> ZoneInfo:
        if not name:
            merchant = view.merchant_id
            zone = self._cached(("zone", merchant), lambda: self.store.merchant_timezone(merchant))
            name = zone or "UTC"
        try:
            return ZoneInfo(check_timezone(name))
        except (StoreError, ValueError):
            raise ApiError(400, "invalid_parameter", f"tz: {name!r} is not an IANA zone") from None

    def _range(
        self, start: str | None, end: str | None, zone: ZoneInfo
    ) -> tuple[datetime, datetime]:
        until = _parse_time(end, zone, "to") if end else self._clock()
        if start:
            since = _parse_time(start, zone, "from")
        else:
            first_day = until.astimezone(zone) - timedelta(days=self.config.default_range_days)
            since = local_midnight(first_day.date() + timedelta(days=1), zone)
        if since >= until:
            raise ApiError(400, "invalid_parameter", "from: must be before to")
        return since, until

    @staticmethod
    def _int(value: str | None, name: str, default: int) -> int:
        if value is None:
            return default
        # isdigit() alone admits "²" and other digits int() refuses
        if not (value.isascii() and value.isdigit()) or not 0 < int(value) <= 100:
            raise ApiError(400, "invalid_parameter", f"{name}: a number from 1 to 100")
        return int(value)


async def _body(request: Request) -> bytes:
    """The request's body, refused with 413 past :data:`MAX_BODY_BYTES` before it is all read."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "body_too_large", f"bodies are at most {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"bodies are at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_time(text: str, zone: ZoneInfo, name: str) -> datetime:
    """``text`` as an instant in ``[EARLIEST, LATEST]``: a date (its local midnight in
    ``zone``) or a time, with an offset or in ``zone``."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            _check_year(day.year, name)
            at = local_midnight(day, zone)
        else:
            at = datetime.fromisoformat(text)
            _check_year(at.year, name)
            if at.tzinfo is None:
                at = at.replace(tzinfo=zone)
    except ValueError:
        raise ApiError(
            400, "invalid_parameter", f"{name}: a date (2026-11-26) or a time with an offset"
        ) from None
    # a day's local midnight east of UTC is on the UTC day before
    if not EARLIEST - ZONE_SLACK <= at <= LATEST + ZONE_SLACK:
        raise _out_of_range(name)
    return at


def _check_year(year: int, name: str) -> None:
    # before any arithmetic: year 1 or 9999 shifted by an offset or a period overflows
    if not EARLIEST.year - 1 <= year <= LATEST.year:
        raise _out_of_range(name)


def _out_of_range(name: str) -> ApiError:
    return ApiError(
        400, "out_of_range", f"{name}: times from {EARLIEST.date()} to {LATEST.date()} (UTC) only"
    )


def _is_midnight(at: datetime, zone: ZoneInfo) -> bool:
    return at == local_midnight(at.astimezone(zone).date(), zone)


def _describe(span: timedelta) -> str:
    if span.days >= 730:
        return f"{span.days // 365} years"
    if span.days >= 2:
        return f"{span.days} days"
    return f"{int(span.total_seconds() // 3600)} hours"


def _shifted(
    start: datetime, end: datetime, kind: str, zone: ZoneInfo
) -> tuple[datetime, datetime]:
    if kind == "previous_period":
        return start - (end - start), start
    local_start, local_end = start.astimezone(zone), end.astimezone(zone)
    try:
        return (
            local_start.replace(year=local_start.year - 1),
            local_end.replace(year=local_end.year - 1),
        )
    except ValueError:  # 29 February
        return local_start - timedelta(days=365), local_end - timedelta(days=365)


def _epochs(start: datetime, end: datetime) -> list[int]:
    """One period exactly ``[start, end)``, rounded to whole 15-minute buckets."""
    first, last = int(start.timestamp()), int(end.timestamp())
    return [first - first % 900, last - last % 900 if last % 900 == 0 else last + 900 - last % 900]


def _series_json(
    series: Series, view: MerchantView, bounds: Sequence[int], metric: Metric
) -> dict[str, Any]:
    body = {
        "member": series.member,
        "values": series.values,
        "provisional": [not view.is_final(end) for end in bounds[1:]],
    }
    if metric.kind == "sum" and None in series.values:
        # a sum beyond a signed 64-bit integer: shown as no number, never a wrapped one
        body["overflow"] = [value is None for value in series.values]
    return body


def _complete_through(view: MerchantView, zone: ZoneInfo) -> str | None:
    """When the final (exactly recomputed) part of every answer ends, in the answer's zone."""
    if view.sealed_through is None:
        return None
    return datetime.fromtimestamp(view.sealed_through, zone).isoformat()
