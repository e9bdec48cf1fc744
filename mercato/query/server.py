"""Running the query API: ``mercato run api``."""

from __future__ import annotations

from mercato.asgi import serve_asgi
from mercato.config import Config
from mercato.metrics.definitions import load_definitions
from mercato.query.app import QueryApi
from mercato.query.tokens import TokenSigner, load_or_create
from mercato.store import open_store


def signer_for(config: Config) -> TokenSigner:
    """The token signer of this deployment (secret from config or the data directory)."""
    return TokenSigner(config.api.secret or load_or_create(config.data_path / "secret.key"))


def admin_token_for(config: Config) -> str:
    return config.api.admin_token or load_or_create(config.data_path / "admin.token")


def serve(config: Config, *, announce: bool = True) -> None:
    """Serve until SIGINT or SIGTERM; requests in flight finish first."""
    definitions = load_definitions(config.aggregator.definitions or None)
    with open_store(config) as store:
        api = QueryApi(config.api, store, definitions, signer_for(config), admin_token_for(config))
        if announce:
            print(
                f"mercato api on http://{config.api.host}:{config.api.port} "
                f"(docs at /docs, store {config.store_path})",
                flush=True,
            )
        serve_asgi(api.app, config.api.host, config.api.port)
