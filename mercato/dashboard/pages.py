"""The dashboard's routes: three pages and their static files."""

from __future__ import annotations

import functools
import html
import zoneinfo
from pathlib import Path
from string import Template

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

HERE = Path(__file__).parent
STATIC = HERE / "static"

# Only this server's scripts and API; uPlot sets element styles, hence 'unsafe-inline' for
# styles (no script runs inline).
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@functools.cache
def render(name: str) -> str:
    """The page ``templates/<name>.html``, filled in once per process."""
    # the zones the API accepts (ZoneInfo names, less the host's own aliases)
    zones = sorted(zoneinfo.available_timezones() - {"localtime", "posixrules", "Factory"})
    options = "\n".join(
        f'      <option value="{html.escape(z)}">{html.escape(z)}</option>' for z in zones
    )
    datalist = "\n".join(f'    <option value="{html.escape(z)}">' for z in zones)
    text = (HERE / "templates" / f"{name}.html").read_text(encoding="utf-8")
    return Template(text).substitute(zones=options, zone_list=datalist)


def _page(name: str) -> Route:
    async def endpoint(request: Request) -> HTMLResponse:
        return HTMLResponse(render(name), headers=HEADERS)

    path = "/" if name == "signin" else f"/{name}"
    return Route(path, endpoint, name=f"dashboard-{name}")


def routes() -> list[BaseRoute]:
    """``/`` (sign in), ``/app`` (a merchant's analytics), ``/console`` (operators),
    ``/static/…``."""
    return [
        _page("signin"),
        _page("app"),
        _page("console"),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
