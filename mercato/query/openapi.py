"""The query API's OpenAPI document, and a self-contained page that renders it (no CDN)."""

from __future__ import annotations

from typing import Any

from mercato import __version__

_TIME = "a date (local midnight in tz) or an RFC 3339 time, from 1980-01-01 to 2200-01-01 (UTC)"


def _param(
    name: str, description: str, schema: dict[str, Any], where: str = "query"
) -> dict[str, Any]:
    return {"name": name, "in": where, "description": description, "schema": schema,
            "required": where == "path"}  # fmt: skip


_RANGE = [
    _param("from", f"Start of the range: {_TIME}. Default: 7 days ago.", {"type": "string"}),
    _param("to", f"End of the range (exclusive): {_TIME}. Default: now.", {"type": "string"}),
    _param("tz", "IANA time zone. Default: the merchant's, else UTC.", {"type": "string"}),
]
_ERRORS = {
    "400": {
        "description": "A parameter is invalid, or the range is too long for the "
        "granularity (at most max_points periods, 5,000 by default); the message names it."
    },
    "401": {"description": "Missing, invalid or expired token."},
    "404": {"description": "No such metric."},
    "429": {"description": "Rate limited; see Retry-After."},
    "503": {"description": "Too many requests in progress, or the store is away; see Retry-After."},
}
_MERCHANT: list[dict[str, list[str]]] = [{"merchantToken": []}]


_ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
_ADMIN_ERRORS = {
    "401": {"description": "No token."},
    "403": {"description": "Not the admin token."},
}


def _admin(
    summary: str, answer: str, parameters: list[dict[str, Any]] | None = None, status: str = "200"
) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": _ADMIN,
        **({"parameters": parameters} if parameters else {}),
        "responses": {status: {"description": answer}, **_ADMIN_ERRORS},
    }


_VERSION = _param("version", "Definitions version id", {"type": "integer"}, "path")
_STARTED = "The action started: an operation {id, command, started_at}; see /v1/admin/operations"

# The operator console's endpoints (mercato.console.api): reads across merchants, and actions
# run in child processes, each the library call of the mercato command named in it.
ADMIN_PATHS: dict[str, dict[str, Any]] = {
    "/v1/admin/pipeline": {
        "get": _admin(
            "Log offsets per partition, each consumer's offsets and lag, freshness of every layer",
            "partitions, consumers (offsets, lag per partition), freshness",
        )
    },
    "/v1/admin/ingest": {
        "get": _admin(
            "Ingest rates over the last hour: events/s into the log, accepted and rejected "
            "events/s and 4xx/5xx requests/s at the collector (sampled by this API process)",
            "points, totals, error (why the collector could not be read)",
        )
    },
    "/v1/admin/jobs": {
        "get": _admin(
            "The scheduler's jobs and their latest attempts",
            "jobs, runs",
            [_param("limit", "Attempts to return", {"type": "integer", "default": 50})],
        )
    },
    "/v1/admin/jobs/{name}/run": {
        "post": _admin(
            "Run a job now, with its retries, recorded (mercato jobs run NAME)",
            _STARTED,
            [_param("name", "Job name", {"type": "string"}, "path")],
            "202",
        )
    },
    "/v1/admin/versions": {
        "get": _admin(
            "Definitions versions, the serving one and the serving switches",
            "serving, versions, history",
        )
    },
    "/v1/admin/versions/{version}/diff": {
        "get": _admin(
            "Final values per merchant, metric and UTC day where two versions differ",
            "old, new, rows, truncated",
            [
                _VERSION,
                _param(
                    "against", "The other version (default: the serving one)", {"type": "integer"}
                ),
                _param("from", "First UTC day (default: 30 days ago)", {"type": "string"}),
                _param("to", "UTC day to stop before (default: tomorrow)", {"type": "string"}),
                _param("limit", "Most rows", {"type": "integer", "default": 200}),
            ],
        )
    },
    "/v1/admin/versions/{version}/promote": {
        "post": _admin("Make a version serve (mercato promote N)", _STARTED, [_VERSION], "202")
    },
    "/v1/admin/rollback": {
        "post": _admin(
            "Make the previous version serve again (mercato rollback)", _STARTED, None, "202"
        )
    },
    "/v1/admin/operations": {
        "get": _admin(
            "Actions this API process started, with their exit code, output's tail and result",
            "operations",
        )
    },
    "/v1/admin/archive": {
        "get": _admin(
            "Committed archive files and bytes, and per UTC hour whether it holds files and "
            "whether it is sealed",
            "files, bytes, partitions, hours",
            [_param("days", "Hours of the last this many days", {"type": "integer", "default": 7})],
        )
    },
    "/v1/admin/quarantine": {
        "get": _admin(
            "The collector's quarantine: open entries (Segment messages acknowledged but not "
            "accepted) by reason, and the newest of them with the start of their message",
            "exists, total, by_reason, latest",
            [
                _param(
                    "limit",
                    "Newest entries to return (most 100)",
                    {"type": "integer", "default": 20},
                )
            ],
        )
    },
    "/v1/admin/merchants/{merchant_id}": {
        "get": _admin(
            "A merchant's time zone and whether it has data in the last 90 days",
            "merchant_id, timezone, has_data, counts per metric",
            [_param("merchant_id", "Merchant", {"type": "string"}, "path")],
        )
    },
}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 description of the query API."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Mercato query API",
            "version": __version__,
            "description": "Per-merchant time-series metrics. Every point is provisional "
            "until the batch layer seals its hour; complete_through says up to when "
            "answers are final.",
        },
        "components": {
            "securitySchemes": {
                "merchantToken": {"type": "http", "scheme": "bearer", "description": "mt_…"},
                "adminToken": {"type": "http", "scheme": "bearer"},
            }
        },
        "paths": {
            "/v1/metrics": {
                "get": {
                    "summary": "The metric catalogue",
                    "security": _MERCHANT,
                    "responses": {
                        "200": {
                            "description": "version, tz (the merchant's zone), metrics with "
                            "kind, unit, dimensions"
                        }
                    },
                }
            },
            "/v1/metrics/{name}": {
                "get": {
                    "summary": "One metric as a time series",
                    "security": _MERCHANT,
                    "parameters": [
                        _param("name", "Metric name", {"type": "string"}, "path"),
                        *_RANGE,
                        _param(
                            "granularity",
                            "Period length",
                            {
                                "type": "string",
                                "enum": ["15m", "hour", "day", "week", "month"],
                                "default": "day",
                            },
                        ),
                        _param(
                            "group_by",
                            "A dimension of the metric: top members + other",
                            {"type": "string"},
                        ),
                        _param(
                            "top",
                            "How many members with group_by",
                            {"type": "integer", "minimum": 1, "maximum": 100, "default": 5},
                        ),
                        _param(
                            "compare",
                            "Add the same periods shifted back",
                            {"type": "string", "enum": ["previous_period", "previous_year"]},
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "periods, series (values, provisional, and for "
                            "a sum that left the range of a signed 64-bit integer a null value "
                            "flagged in overflow), invalid (events the metric matched in the "
                            "range but could not use: a value of the wrong kind, left out of "
                            "the values)"
                        },
                        **_ERRORS,
                    },
                }
            },
            "/v1/overview": {
                "get": {
                    "summary": "KPI values for a range with their change vs the previous period",
                    "security": _MERCHANT,
                    "parameters": [
                        *_RANGE,
                        _param(
                            "metrics",
                            "Comma-separated metrics (default: the configured KPIs); "
                            "percentiles are left out",
                            {"type": "string"},
                        ),
                    ],
                    "responses": {"200": {"description": "kpis"}, **_ERRORS},
                }
            },
            "/v1/admin/tokens": {
                "post": {
                    "summary": "Issue a merchant token (for the platform's backend)",
                    "security": [{"adminToken": []}],
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["merchant_id"],
                                    "properties": {
                                        "merchant_id": {"type": "string"},
                                        "ttl_seconds": {"type": "integer", "minimum": 1},
                                    },
                                }
                            }
                        }
                    },
                    "responses": {"200": {"description": "token, expires_at"}},
                }
            },
            "/v1/admin/merchants/{merchant_id}/timezone": {
                "put": {
                    "summary": "Set a merchant's IANA time zone (its default for queries)",
                    "security": [{"adminToken": []}],
                    "parameters": [_param("merchant_id", "Merchant", {"type": "string"}, "path")],
                    "responses": {"200": {"description": "the stored zone"}},
                }
            },
            **ADMIN_PATHS,
        },
    }


DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mercato query API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
code{background:#f3f3f3;padding:0 .25rem}h2{margin-top:2rem}.m{font-weight:700;color:#0b5}
td{padding:.2rem .6rem;vertical-align:top;border-bottom:1px solid #eee}
</style></head><body><h1>Mercato query API</h1>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a>.
Send <code>Authorization: Bearer &lt;token&gt;</code>.</p><div id="paths"></div>
<script>
fetch("/openapi.json").then(r => r.json()).then(spec => {
  const root = document.getElementById("paths");
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const h = document.createElement("h2");
      h.innerHTML = `<span class="m">${method.toUpperCase()}</span> <code>${path}</code>`;
      root.appendChild(h);
      const p = document.createElement("p"); p.textContent = op.summary; root.appendChild(p);
      if (op.parameters) {
        const t = document.createElement("table");
        for (const q of op.parameters) {
          const row = t.insertRow();
          row.insertCell().innerHTML = `<code>${q.name}</code>`;
          row.insertCell().textContent = q.description;
        }
        root.appendChild(t);
      }
    }
  }
});
</script></body></html>
"""
