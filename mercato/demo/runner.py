"""``mercato demo``: the embedded pipeline on one machine, with generated traffic.

The collector, the aggregator, the archiver, the scheduler (sealing hours every five
minutes), the query API and the traffic generator run as separate processes (so both cores
work) under one data directory; this process watches the log and the store and shows events
flowing through. Ctrl-C stops the generator first, then the collector, which finishes the
requests in flight, then the aggregator, which finishes its batch, then the archiver, the
scheduler and the API. Running it again on the same directory resumes where it stopped.
It prints links that open a merchant's dashboard and the operator console signed in.
"""

from __future__ import annotations

import base64
import http.client
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mercato.collector.keys import KeyStore
from mercato.config import Config
from mercato.demo.errors import DemoError
from mercato.demo.traffic import TrafficGenerator, TrafficStats
from mercato.log import open_log
from mercato.log.base import Log
from mercato.metrics.definitions import load_definitions
from mercato.names import aggregator_consumer
from mercato.query.server import admin_token_for, signer_for
from mercato.store import open_store


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_until_ready(
    name: str, host: str, port: int, process: subprocess.Popen[bytes], path: str, timeout: float
) -> None:
    """Poll ``path`` until it answers 200; fail if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"the {name} exited with status {process.returncode}")
        try:
            connection = http.client.HTTPConnection(host, port, timeout=1)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise DemoError(f"the {name} did not become ready within {timeout:.0f} s")


def run_demo(
    config: Config,
    *,
    duration: float | None,
    rate: float,
    merchants: int,
    backfill_days: int,
    backfill_events: int,
    console: Console,
    config_file: str | None = None,
) -> TrafficStats:
    """Run the pipeline with traffic until Ctrl-C or ``duration``; return what was acknowledged."""
    host = config.collector.host
    port = _port(host, config.collector.port)
    api_port = _port(config.api.host, config.api.port, avoid=port)
    config.data_path.mkdir(parents=True, exist_ok=True)
    keys = KeyStore(config.keys_path)
    for stale in keys.list():  # left by a demo that was killed before it could revoke its key
        if stale.source == DEMO_SOURCE and stale.revoked_at is None:
            keys.revoke(stale.id)
    key, secret = keys.create(DEMO_SOURCE)
    env = {
        **os.environ,
        "MERCATO_DATA_DIR": str(config.data_path.resolve()),
        "MERCATO_COLLECTOR_HOST": host,
        "MERCATO_COLLECTOR_PORT": str(port),
        "MERCATO_API_PORT": str(api_port),
        "MERCATO_LOG_PARTITIONS": str(config.log.partitions),
    }
    url = f"http://{host}:{port}"
    api_url = f"http://{config.api.host}:{api_port}"
    generator = TrafficGenerator(merchants)
    processes = {
        role: _start_role(role, config, env)
        for role in ("collector", "aggregator", "archiver", "scheduler", "api")
    }
    traffic: subprocess.Popen[bytes] | None = None
    stats = TrafficStats()
    try:
        wait_until_ready("collector", host, port, processes["collector"], "/readyz", 30)
        wait_until_ready("api", config.api.host, api_port, processes["api"], "/livez", 30)
        with open_store(config) as store:
            for merchant, zone in generator.zones.items():
                store.set_merchant_timezone(merchant, zone)
        if backfill_days:
            _backfill(url, secret, generator, backfill_days, backfill_events, console)
        token, _ = signer_for(config).issue(generator.merchants[0], 7 * 86_400)
        _introduce(
            console, config, url, api_url, secret, token, generator.merchants[0], config_file
        )
        traffic = subprocess.Popen(
            [
                sys.executable, "-m", "mercato", "traffic", "--url", url, "--key", secret,
                "--rate", str(rate), "--merchants", str(merchants),
            ],
            env=env,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip

        def died() -> str | None:
            for name, process in processes.items():
                if process.poll() is not None:
                    return f"the {name} stopped; see {config.data_path / (name + '.log')}"
            return None

        consumer = aggregator_consumer(
            load_definitions(config.aggregator.definitions or None).version
        )
        with closing(open_log(config)) as log, open_store(config) as store:
            _watch(log, lambda: store.offsets(consumer), duration, console, died)
    except KeyboardInterrupt:
        pass
    finally:
        if traffic is not None:
            stats = _stop_traffic(traffic)
        for process in processes.values():
            _stop(process)
        keys.revoke(key.id)  # each run has its own key, valid while it runs
    return stats


def _port(host: str, wanted: int, avoid: int | None = None) -> int:
    if wanted != avoid and port_is_free(host, wanted):
        return wanted
    return free_port(host)


def _introduce(
    console: Console,
    config: Config,
    url: str,
    api_url: str,
    secret: str,
    token: str,
    merchant: str,
    config_file: str | None,
) -> None:
    console.print(f"[bold]collector[/]  {url}   (data in {config.data_path.resolve()})")
    console.print(f"[bold]write key[/]  {secret}")
    console.print(f"[bold]query API[/]  {api_url}   docs: {api_url}/docs")
    console.print(f"[bold]token[/]      {token}   (merchant {merchant}, 7 days)", soft_wrap=True)
    console.print(
        f"[bold]dashboard[/]  {api_url}/app   signed in as {merchant}: {api_url}/#token={token}",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"[bold]console[/]    {api_url}/console   signed in as admin: "
        f"{api_url}/#token={admin_token_for(config)}",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"[bold]try[/]        curl -H 'Authorization: Bearer {token}' "
        f"'{api_url}/v1/metrics/gross_revenue?granularity=day&group_by=channel'",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"[bold]commands[/]   {commands_for(config, config_file)} log stats   "
        "(or jobs list, keys list, seal, …)",
        soft_wrap=True,
        highlight=False,
    )


def commands_for(config: Config, config_file: str | None = None) -> str:
    """How to run ``mercato`` against the demo's data from another terminal in this
    directory: with the demo's ``--config`` file, and ``MERCATO_DATA_DIR`` unless the data
    dir is the default one."""
    command = "mercato"
    if config_file is not None:
        command += f" --config {shlex.quote(str(Path(config_file).resolve()))}"
    if config.data_path.resolve() == Config().data_path.resolve():
        return command
    return f"MERCATO_DATA_DIR={shlex.quote(str(config.data_path.resolve()))} {command}"


def _backfill(
    url: str, secret: str, generator: TrafficGenerator, days: int, events: int, console: Console
) -> None:
    """Post ``events`` events spread over the past ``days`` days, with a progress bar."""
    end = datetime.now(UTC)
    start = end - timedelta(days=days)
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80)
    headers = {
        "Authorization": "Basic " + base64.b64encode(f"{secret}:".encode()).decode(),
        "Content-Type": "application/json",
    }
    batch = 1_000  # events of ~290 bytes: well under the 500 KB body limit
    with Progress(
        TextColumn(f"backfilling {days} days"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=console, disable=not console.is_terminal,
    ) as progress:  # fmt: skip
        task = progress.add_task("backfill", total=events)
        sent = 0
        while sent < events:
            size = min(batch, events - sent)
            body = msgspec.json.encode(generator.history(size, start, end))
            connection.request("POST", "/v1/events", body, headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status in (429, 503):
                time.sleep(float(response.getheader("Retry-After") or 1))
                continue
            if response.status != 200:
                raise DemoError(f"backfill refused: {response.status} {answer[:200]!r}")
            sent += size
            progress.update(task, advance=size)
    connection.close()
    console.print(f"backfilled {events:,} events over {days} days", highlight=False)


def _start_role(role: str, config: Config, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``mercato run ROLE`` in the background, its output in ``<data_dir>/ROLE.log``."""
    with open(config.data_path / f"{role}.log", "ab") as output:
        # its own session: a Ctrl-C at the terminal reaches the demo alone, which then stops
        # every role in order (had the roles received it too, one stopping before the demo
        # noticed the Ctrl-C looked like a role that died)
        return subprocess.Popen(
            [sys.executable, "-m", "mercato", "run", role],
            env=env,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )


TRAFFIC_START_SECONDS = 60.0
DEMO_SOURCE = "demo"


def _watch(
    log: Log,
    counted: Callable[[], dict[int, int]],
    duration: float | None,
    console: Console,
    died: Callable[[], str | None],
) -> None:
    started = time.monotonic()
    # ``duration`` is seconds of traffic: counted from the first events in the log (the
    # generator takes a while to start on a busy machine), or from TRAFFIC_START_SECONDS
    deadline = None if duration is None else started + TRAFFIC_START_SECONDS + duration
    first = sum(log.end_offset(p) for p in range(log.partitions))
    last_total, last_time = first, started
    interactive = console.is_terminal
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(1.0 if duration is None else min(1.0, max(duration, 0.1)))
            if (problem := died()) is not None:
                raise DemoError(problem)
            ends = [log.end_offset(p) for p in range(log.partitions)]
            done = counted()
            total, now = sum(ends), time.monotonic()
            if duration is not None and total > first and last_total == first:
                deadline = min(deadline or now, now + duration)  # traffic has begun
            rate = (total - last_total) / (now - last_time)
            last_total, last_time = total, now
            lag = sum(end - done.get(p, 0) for p, end in enumerate(ends))
            if interactive:
                live.update(_table(ends, done, rate, total - first, now - started), refresh=True)
            else:
                console.print(
                    f"{now - started:5.0f}s  {rate:9.0f} events/s  {total:10d} in the log  "
                    f"{lag:8d} not yet aggregated",
                    highlight=False,
                )


def _table(ends: list[int], done: dict[int, int], rate: float, added: int, elapsed: float) -> Table:
    rows = [(str(p), f"{end:,}", f"{done.get(p, 0):,}") for p, end in enumerate(ends)]
    totals = [
        ("events/s", f"{rate:,.0f}", ""),
        ("added", f"{added:,}", ""),
        ("total", f"{sum(ends):,}", f"{sum(done.values()):,}"),
    ]
    table = Table(title=f"events flowing through the pipeline ({elapsed:.0f} s, Ctrl-C to stop)")
    for header in ("partition", "in the log", "aggregated"):
        # on a terminal too narrow for the table a number wraps, never ends as "22,040…"
        table.add_column(header, justify="right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    table.add_section()
    for row in totals:
        table.add_row(*row)
    return table


def _stop_traffic(process: subprocess.Popen[bytes]) -> TrafficStats:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        out, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    try:
        return msgspec.json.decode(out.strip().splitlines()[-1], type=TrafficStats)
    except (IndexError, msgspec.DecodeError):
        return TrafficStats()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
