"""Running the query API: ``mercato run api`` (the JSON API, the admin endpoints of the
operator console (:mod:`mercato.console`), and the dashboards)."""

from __future__ import annotations

import threading
from contextlib import suppress

from mercato.asgi import ServerLimits, serve_asgi
from mercato.config import Config
from mercato.console.api import OperatorApi
from mercato.console.launcher import Launcher, SpawnRunner
from mercato.dashboard import routes as dashboard_routes
from mercato.errors import MercatoError
from mercato.log import open_log
from mercato.log.base import Log
from mercato.metrics.definitions import load_definitions
from mercato.query.app import QueryApi
from mercato.query.tokens import TokenSigner, load_or_create
from mercato.store import describe_store, open_store
from mercato.store.base import Store


def signer_for(config: Config) -> TokenSigner:
    """The token signer of this deployment (secret from config or the data directory)."""
    return TokenSigner(config.api.secret or load_or_create(config.data_path / "secret.key"))


def admin_token_for(config: Config) -> str:
    return config.api.admin_token or load_or_create(config.data_path / "admin.token")


class LogOpener:
    """The log, opened on first use and only if it exists: the API never creates one, and
    answers without the log's figures on a machine that has none."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._log: Log | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Log | None:
        with self._lock:
            if self._log is None and self._config.log.backend == "kafka":
                # A Kafka log exists elsewhere: try again on the next call if it is not there.
                with suppress(MercatoError):
                    self._log = open_log(self._config)
            elif self._log is None and (self._config.log_path / "meta.json").exists():
                self._log = open_log(self._config)
            return self._log

    def close(self) -> None:
        with self._lock, suppress(MercatoError, OSError):
            if self._log is not None:
                self._log.close()


def build(
    config: Config, store: Store, log: LogOpener, config_path: str | None = None
) -> tuple[QueryApi, OperatorApi]:
    """The query API with the operator console's endpoints and the dashboards mounted."""
    definitions = load_definitions(config.aggregator.definitions or None)
    api = QueryApi(config.api, store, definitions, signer_for(config), admin_token_for(config))
    launcher = Launcher(SpawnRunner(config))
    operator = OperatorApi(config, store, api, launcher, log=log, config_path=config_path)
    api.add_routes([*operator.routes(), *dashboard_routes()])
    return api, operator


def serve(config: Config, *, config_path: str | None = None, announce: bool = True) -> None:
    """Serve until SIGINT or SIGTERM; requests in flight finish first."""
    log = LogOpener(config)
    with open_store(config) as store:
        api, operator = build(config, store, log, config_path)
        if announce:
            base = f"http://{config.api.host}:{config.api.port}"
            print(
                f"mercato api on {base} (docs at /docs, dashboard at /, console at /console, "
                f"store {describe_store(config)})",
                flush=True,
            )
        operator.start()
        try:
            serve_asgi(
                api.app, config.api.host, config.api.port, limits=ServerLimits.of(config.api)
            )
        finally:
            operator.stop()
            api.offload.close()
            log.close()
