"""``mercato``: one command line for every role.

Every command lives beside the role it drives (``mercato/<role>/cli.py``; ``config`` in
:mod:`mercato.config_cli`, ``demo`` in :mod:`mercato.demo.cli`). This module only names
them: :data:`COMMANDS` and :data:`RUN` map each name to the module that defines it and to its
one-line help, so ``mercato --help`` lists them without importing any role (nor DuckDB,
PyArrow, Kafka or PostgreSQL clients). A command's module is imported when it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import click

from mercato import __version__


class Lazy(NamedTuple):
    """A command defined elsewhere: ``module:attribute``, and its one-line help (its
    docstring's first sentence; a test keeps the two the same)."""

    target: str
    help: str
    hidden: bool = False


COMMANDS: dict[str, Lazy] = {
    "archive": Lazy("mercato.archive.cli:archive_group", "Maintain the raw-event archive."),
    "config": Lazy("mercato.config_cli:config_group", "Show the configuration."),
    "db": Lazy("mercato.store.cli:db_group", "The serving store's schema."),
    "demo": Lazy(
        "mercato.demo.cli:demo",
        "Run the embedded pipeline with generated traffic and watch events arrive.",
    ),
    "diff": Lazy(
        "mercato.batch.cli:diff_command",
        "Final values per merchant, metric and UTC day where VERSION differs.",
    ),
    "drift": Lazy(
        "mercato.batch.cli:drift_command",
        "Compare the speed layer with the exact answer for recently sealed hours.",
    ),
    "invalid": Lazy(
        "mercato.batch.cli:invalid_command",
        "List the archived events METRIC matched but could not use.",
    ),
    "jobs": Lazy(
        "mercato.scheduler.cli:jobs_group",
        "The scheduler's jobs: list them, their run history, run one now, backfill a range.",
    ),
    "kafka": Lazy(
        "mercato.log.cli:kafka_group",
        "The Kafka log's topic ([log] kafka_topic on kafka_bootstrap_servers).",
    ),
    "keys": Lazy(
        "mercato.collector.cli:keys_group",
        "Write keys that producers authenticate with (stored hashed).",
    ),
    "log": Lazy("mercato.log.cli:log_group", "Inspect and maintain the durable event log."),
    "promote": Lazy(
        "mercato.batch.cli:promote_command",
        "Make VERSION serve: seal what it lacks, replay the log into its speed layer, switch.",
    ),
    "quarantine": Lazy(
        "mercato.collector.cli:quarantine_group",
        "Segment messages the collector acknowledged but could not accept: list them, show "
        "one, replay them once the configuration is fixed, or purge them.",
    ),
    "reprocess": Lazy(
        "mercato.batch.cli:reprocess_command",
        "Build a shadow version from the archive (served by nobody until promoted).",
    ),
    "rollback": Lazy(
        "mercato.batch.cli:rollback_command",
        "Make the version that served before the last promote serve again.",
    ),
    "seal": Lazy(
        "mercato.batch.cli:seal",
        "Recompute complete hours exactly from the archive and serve them as final.",
    ),
    "sql": Lazy(
        "mercato.batch.cli:sql_command",
        "Run DuckDB SQL over the archive: a view `events` of every archived row.",
    ),
    "tokens": Lazy("mercato.query.cli:tokens_group", "Merchant tokens for the query API."),
    "traffic": Lazy(
        "mercato.demo.cli:traffic",
        "Send generated traffic to a collector; prints what was acknowledged as JSON.",
        hidden=True,
    ),
    "versions": Lazy(
        "mercato.batch.cli:versions_group", "Definitions versions: list them, drop old ones."
    ),
}

RUN: dict[str, Lazy] = {
    "aggregator": Lazy(
        "mercato.aggregator.cli:run_aggregator",
        "Stream rollups: log partitions in, rollups and offsets into the store.",
    ),
    "api": Lazy(
        "mercato.query.cli:run_api",
        "The query API, the dashboards and the operator console ([api] host and port).",
    ),
    "archiver": Lazy(
        "mercato.archive.cli:run_archiver",
        "Raw-event archive: log partitions in, Parquet files by event hour out.",
    ),
    "collector": Lazy(
        "mercato.collector.cli:run_collector",
        "The HTTP ingest endpoint ([collector] host and port).",
    ),
    "scheduler": Lazy(
        "mercato.scheduler.cli:run_scheduler",
        "The job scheduler: one leader runs [scheduler.jobs]; more processes stand by.",
    ),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when one runs (click's documented
    LazyGroup pattern); its help lists them from the table, importing none."""

    def __init__(self, *args: Any, lazy: Mapping[str, Lazy], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = self.lazy.get(cmd_name)
        if entry is None:
            return super().get_command(ctx, cmd_name)
        return load(entry)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        shown: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            entry = self.lazy.get(name)
            # a stand-in with the table's help: click shortens it as it would the command's
            command = (
                click.Command(name, help=entry.help, hidden=entry.hidden)
                if entry is not None
                else super().get_command(ctx, name)
            )
            if command is not None and not command.hidden:
                shown.append((name, command))
        if shown:
            limit = formatter.width - 6 - max(len(name) for name, _ in shown)
            with formatter.section("Commands"):
                formatter.write_dl([(name, c.get_short_help_str(limit)) for name, c in shown])


def load(entry: Lazy) -> click.Command:
    """The command ``entry`` names, its module imported."""
    module, _, attribute = entry.target.partition(":")
    command = getattr(importlib.import_module(module), attribute)
    if not isinstance(command, click.Command):
        raise TypeError(f"{entry.target} is not a click command")
    return command


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="MERCATO_CONFIG",
    help="TOML configuration file (default: none; MERCATO_* variables still apply).",
)
@click.version_option(__version__, prog_name="mercato")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Mercato turns a commerce platform's event stream into per-merchant metrics."""
    ctx.ensure_object(dict)["config_path"] = config_path


@click.group(cls=LazyGroup, lazy=RUN)
def run() -> None:
    """Run one role of the pipeline in the foreground."""
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


cli.add_command(run)


def main() -> None:
    cli(prog_name="mercato")
