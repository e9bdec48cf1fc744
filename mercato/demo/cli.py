"""``mercato demo`` and the hidden ``mercato traffic``: the embedded pipeline with generated
traffic, and the traffic generator on its own (the demo starts it as a process).

Thin: each calls :mod:`mercato.demo.runner` or :mod:`mercato.demo.traffic`.
"""

from __future__ import annotations

import signal

import click
import msgspec

from mercato.clitools import config_path, console, context_config, friendly, print_json
from mercato.demo.traffic import TrafficGenerator, TrafficSender
from mercato.errors import MercatoError


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Default: the configured data_dir (./mercato-data), as for every other command.",
)
@click.option("--duration", type=float, help="Stop after this many seconds (default: Ctrl-C).")
@click.option("--rate", type=float, default=2000.0, show_default=True, help="Events per second.")
@click.option("--merchants", type=int, default=2000, show_default=True)
@click.option(
    "--backfill",
    default="0d",
    show_default=True,
    help="First load this much history, e.g. 30d (days).",
)
@click.option(
    "--backfill-events", type=int, default=500_000, show_default=True, help="Events in it."
)
@click.pass_context
@friendly
def demo(
    ctx: click.Context,
    data_dir: str | None,
    duration: float | None,
    rate: float,
    merchants: int,
    backfill: str,
    backfill_events: int,
) -> None:
    """Run the embedded pipeline with generated traffic and watch events arrive."""
    # not at the top: `mercato traffic`, which the demo starts, needs none of the pipeline
    from mercato.demo.runner import run_demo  # noqa: PLC0415

    config = context_config(ctx)
    if data_dir is not None:
        config = msgspec.structs.replace(config, data_dir=str(data_dir))
    if not (backfill.endswith("d") and backfill[:-1].isdigit()):
        raise MercatoError(f"--backfill takes days like 30d, not {backfill!r}")
    stats = run_demo(
        config,
        duration=duration,
        rate=rate,
        merchants=merchants,
        backfill_days=int(backfill[:-1]),
        backfill_events=backfill_events,
        console=console,
        config_file=config_path(ctx),
    )
    console.print(
        f"generator: {stats.events_acknowledged:,} events acknowledged in {stats.requests:,} "
        f"requests ({stats.duplicates_sent:,} sent twice on purpose, {stats.retries} retries)"
    )


@click.command(hidden=True)
@click.option("--url", required=True)
@click.option("--key", required=True)
@click.option("--rate", type=float, default=2000.0)
@click.option("--merchants", type=int, default=2000)
@click.option("--duration", type=float)
def traffic(url: str, key: str, rate: float, merchants: int, duration: float | None) -> None:
    """Send generated traffic to a collector; prints what was acknowledged as JSON."""
    sender = TrafficSender(url, key, TrafficGenerator(merchants), rate=rate)
    signal.signal(signal.SIGTERM, lambda *_: sender.stop())
    signal.signal(signal.SIGINT, lambda *_: sender.stop())
    stats = sender.run(duration)
    print_json(stats)
