"""The operator console's admin endpoints (``/v1/admin/...``, JSON, admin token).

Mounted on the query API by ``mercato run api`` (:func:`mercato.query.server.build`), with
whose admin check and error handling they answer. Reads across merchants (lag, freshness,
archive coverage, versions and their diff, job runs, a merchant's setup) run in a worker
thread, off the event loop that serves merchants. Actions that change the pipeline (run a
job now, promote a version, roll back) do not run in the API process: each is the library
call the ``mercato`` command of the same name makes (:mod:`mercato.console.actions`), made in
a child process by the :class:`~mercato.console.launcher.Launcher`, and
``GET /v1/admin/operations`` shows how it went. One action runs at most once at a time per
API process.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mercato.archive.layout import Root
from mercato.asgi.errors import ApiError
from mercato.batch.versions import diff
from mercato.collector.quarantine import QuarantineView
from mercato.config import ArchiveLocation, Config
from mercato.console.actions import promote_action, rollback_action, run_job_action
from mercato.console.errors import OperationRunning
from mercato.console.launcher import Action, Launcher, Operation
from mercato.console.monitor import IngestMonitor, archive_summary, pipeline
from mercato.errors import MercatoError
from mercato.log.base import Log
from mercato.metrics.definitions import Definitions
from mercato.names import DROPPED, SEALED_THROUGH
from mercato.scheduler.jobs import configured_jobs
from mercato.store.base import Store
from mercato.store.errors import DroppedVersionError, UnknownVersionError

MERCHANT_LOOKBACK_DAYS = 90
MAX_DIFF_DAYS = 400


def _json(body: object, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status, media_type="application/json")


class Host(Protocol):
    """What the console takes from the API that mounts it (the query API): its error
    handling, its admin check and its cache of versions' definitions."""

    def guard(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]: ...

    def require_admin(self, request: Request) -> None: ...

    def definitions_of(self, version: int) -> Definitions: ...


class OperatorApi:
    """The admin endpoints behind the operator console; ``routes`` are added to the query
    API's app, and share its admin check and error handling."""

    def __init__(
        self,
        config: Config,
        store: Store,
        api: Host,
        launcher: Launcher,
        *,
        log: Callable[[], Log | None],
        config_path: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.api = api
        self.launcher = launcher
        self._log = log
        self._config_path = config_path  # the file the jobs it runs read, as the API did
        self._clock = clock
        self.ingest_monitor = IngestMonitor(log, config.api.collector_targets(config.collector))
        self.quarantine_view = QuarantineView(config)

    def routes(self) -> list[Route]:
        guard = self.api.guard
        return [
            Route("/v1/admin/pipeline", guard(self.pipeline)),
            Route("/v1/admin/ingest", guard(self.ingest)),
            Route("/v1/admin/jobs", guard(self.jobs)),
            Route("/v1/admin/jobs/{name}/run", guard(self.run_job), methods=["POST"]),
            Route("/v1/admin/versions", guard(self.versions)),
            Route("/v1/admin/versions/{version}/diff", guard(self.version_diff)),
            Route("/v1/admin/versions/{version}/promote", guard(self.promote), methods=["POST"]),
            Route("/v1/admin/rollback", guard(self.rollback), methods=["POST"]),
            Route("/v1/admin/operations", guard(self.operations)),
            Route("/v1/admin/archive", guard(self.archive)),
            Route("/v1/admin/quarantine", guard(self.quarantine)),
            Route("/v1/admin/merchants/{merchant_id}", guard(self.merchant)),
        ]

    def _archive_root(self) -> Root | None:
        root = self.config.archive_path
        return root if isinstance(root, ArchiveLocation) or root.exists() else None

    # -- reads --------------------------------------------------------------------------------

    async def pipeline(self, request: Request) -> Response:
        self.api.require_admin(request)
        body = await run_in_threadpool(
            pipeline, self.store, self._log(), self._archive_root(), self._clock()
        )
        return _json(body)

    async def ingest(self, request: Request) -> Response:
        self.api.require_admin(request)
        await run_in_threadpool(self.ingest_monitor.sample_if_due)
        return _json(self.ingest_monitor.series())

    async def jobs(self, request: Request) -> Response:
        self.api.require_admin(request)
        limit = _int(request.query_params.get("limit"), "limit", 50, 1000)
        now = datetime.fromtimestamp(self._clock(), UTC)
        jobs = [
            {
                "name": job.name,
                "schedule": job.schedule.text,
                "command": list(job.command),
                "enabled": job.enabled,
                "retries": job.retries,
                "next_run": job.schedule.next_after(now).isoformat() if job.enabled else None,
            }
            for job in configured_jobs(self.config).values()
        ]
        runs = await run_in_threadpool(self.store.job_runs, None, limit)
        return _json({"jobs": jobs, "runs": runs})

    async def versions(self, request: Request) -> Response:
        self.api.require_admin(request)

        def read() -> dict[str, Any]:
            serving = self.store.serving_version()
            return {
                "serving": serving,
                "versions": [
                    {
                        "id": v.id,
                        "hash": v.hash,
                        "created_at": v.created_at,
                        "state": v.state,
                        "serving": v.id == serving,
                        "sealed_through": None
                        if v.state == DROPPED
                        else self.store.watermark(SEALED_THROUGH, v.id),
                    }
                    for v in self.store.versions()
                ],
                "history": self.store.serving_history(limit=20),
            }

        return _json(await run_in_threadpool(read))

    async def version_diff(self, request: Request) -> Response:
        self.api.require_admin(request)
        version = _version(request.path_params["version"])
        query = request.query_params
        against = query.get("against")
        old = _version(against) if against else self.store.serving_version()
        if old is None:
            raise ApiError(400, "invalid_parameter", "against: no version serves yet; name one")
        today = datetime.fromtimestamp(self._clock(), UTC).date()
        start = _day(query.get("from"), "from", today - timedelta(days=30))
        end = _day(query.get("to"), "to", today + timedelta(days=1))
        if start >= end:
            raise ApiError(400, "invalid_parameter", "from: must be before to")
        if (end - start).days > MAX_DIFF_DAYS:
            raise ApiError(400, "invalid_parameter", f"to: at most {MAX_DIFF_DAYS} days after from")
        limit = _int(query.get("limit"), "limit", 200, 5000)

        def read() -> list[Any]:
            rows = []
            for row in diff(self.store, old, version, start, end):
                rows.append(row)
                if len(rows) > limit:
                    break
            return rows

        try:
            rows = await run_in_threadpool(read)
        except (UnknownVersionError, DroppedVersionError) as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        return _json(
            {
                "old": old,
                "new": version,
                "from": start.date().isoformat(),
                "to": end.date().isoformat(),
                "rows": rows[:limit],
                "truncated": len(rows) > limit,
            }
        )

    async def archive(self, request: Request) -> Response:
        self.api.require_admin(request)
        days = _int(request.query_params.get("days"), "days", 7, 90)
        root = self._archive_root()
        if root is None:
            return _json({"path": str(self.config.archive_path), "exists": False})
        try:
            body = await run_in_threadpool(archive_summary, self.store, root, self._clock(), days)
        except MercatoError as exc:
            raise ApiError(503, "archive_unreadable", str(exc)) from None
        return _json({"path": str(self.config.archive_path), "exists": True, **body})

    async def quarantine(self, request: Request) -> Response:
        """The collector's quarantine: open entries by reason and the newest of them."""
        self.api.require_admin(request)
        limit = _int(request.query_params.get("limit"), "limit", 20, 100)
        return _json(await run_in_threadpool(self.quarantine_view.summary, limit))

    async def merchant(self, request: Request) -> Response:
        """A merchant's time zone and whether (and in which metrics) it has data lately."""
        self.api.require_admin(request)
        merchant = request.path_params["merchant_id"]
        now = int(self._clock())
        start = now - MERCHANT_LOOKBACK_DAYS * 86_400
        start -= start % 900

        def read() -> dict[str, Any]:
            version = self.store.serving_version()
            counts: dict[str, int] = {}
            if version is not None:
                definitions = self.api.definitions_of(version)
                for metric in definitions.content.metrics:
                    if metric.kind == "derived":
                        continue
                    members = self.store.members(
                        version, merchant, metric.name, "", start, now + 900,
                        self.store.watermark(SEALED_THROUGH, version),
                    )  # fmt: skip
                    counts[metric.name] = sum(total for _, total in members)
            zone = self.store.merchant_timezone(merchant)
            return {
                "merchant_id": merchant,
                "timezone": zone,
                "timezone_set": zone is not None,
                "has_data": any(counts.values()),
                "lookback_days": MERCHANT_LOOKBACK_DAYS,
                "counts": counts,
            }

        return _json(await run_in_threadpool(read))

    # -- actions ------------------------------------------------------------------------------

    async def run_job(self, request: Request) -> Response:
        self.api.require_admin(request)
        name = request.path_params["name"]
        if name not in self.config.scheduler.jobs:
            raise ApiError(404, "not_found", f"no job named {name!r}")
        return self._start(run_job_action(name, self._config_path))

    async def promote(self, request: Request) -> Response:
        self.api.require_admin(request)
        version = _version(request.path_params["version"])
        known = {v.id: v.state for v in await run_in_threadpool(self.store.versions)}
        if known.get(version, DROPPED) == DROPPED:
            raise ApiError(404, "not_found", f"no live definitions version {version}")
        return self._start(promote_action(version))

    async def rollback(self, request: Request) -> Response:
        self.api.require_admin(request)
        return self._start(rollback_action())

    def _start(self, action: Action) -> Response:
        try:
            operation: Operation = self.launcher.start(action)
        except OperationRunning as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        return _json(operation, 202)

    async def operations(self, request: Request) -> Response:
        self.api.require_admin(request)
        return _json({"operations": self.launcher.operations()})

    def start(self) -> None:
        self.ingest_monitor.start()

    def stop(self) -> None:
        self.ingest_monitor.stop()
        with suppress(MercatoError, OSError):
            self.quarantine_view.close()
        with suppress(MercatoError):
            self.launcher.stop()


def _int(value: str | None, name: str, default: int, most: int) -> int:
    if value is None:
        return default
    if not _digits(value) or not 0 < int(value) <= most:
        raise ApiError(400, "invalid_parameter", f"{name}: a number from 1 to {most}")
    return int(value)


def _digits(text: str) -> bool:
    """Whether ``int(text)`` reads ``text`` as a plain number (isdigit() alone admits "²")."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def _version(text: str) -> int:
    if not _digits(text):
        raise ApiError(400, "invalid_parameter", f"version: a number, not {text!r}")
    return int(text)


def _day(text: str | None, name: str, default: date) -> datetime:
    try:
        day = date.fromisoformat(text) if text else default
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name}: a date like 2026-11-26") from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
