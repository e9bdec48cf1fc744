"""The dashboards: a merchant's analytics (``/app``) and the operator console (``/console``).

Served by ``mercato run api`` beside the JSON API they read (:func:`routes`). The pages are
server-rendered HTML shells plus small ES modules under ``static/`` and a vendored copy of
uPlot (``static/vendor/uplot/``, MIT): nothing to build at install time, nothing fetched
from elsewhere at run time. The browser keeps the token in ``sessionStorage`` and sends it
with ``Authorization: Bearer`` to the same API any client uses, so the API's scoping by
token is the only access control there is: the pages have no merchant parameter.

- ``pages.py``: the routes, the page templates filled in, and the security headers.
- ``templates/``: ``signin.html`` (``/``), ``app.html``, ``console.html``.
- ``static/``: ``common.js`` (token, API calls, formats), ``chart.js`` (uPlot and
  sparklines), ``app.js``, ``console.js``, ``signin.js``, ``style.css``.
"""

from mercato.dashboard.pages import routes

__all__ = ["routes"]
