"""Mercato's HTTP servers: one way to serve an ASGI app, with every connection bounded.

* :mod:`mercato.asgi.server`: :func:`serve_asgi`, uvicorn with Mercato's listeners;
* :mod:`mercato.asgi.acceptor`: accepting connections, and refusing those past the limit;
* :mod:`mercato.asgi.protocol`: HTTP/1.1 with the request head bounded in bytes, count, time;
* :mod:`mercato.asgi.admission`: how many requests run at once, and how long others wait;
* :mod:`mercato.asgi.refusals`: the answers a server gives on its own;
* :mod:`mercato.asgi.limits`: the bounds, read from a config section.
"""

from mercato.asgi.limits import ServerLimits
from mercato.asgi.server import serve_asgi

__all__ = ["ServerLimits", "serve_asgi"]
