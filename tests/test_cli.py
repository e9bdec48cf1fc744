"""The command line as users run it: real `mercato` processes, no tracebacks for user errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import click
import msgspec
import pytest
from click.testing import CliRunner

from mercato.cli import COMMANDS, RUN, cli, load
from mercato.collector.keys import KeyStore
from mercato.config import load_config
from mercato.log import open_log
from mercato.log.base import Record

# What `mercato --help` must not pay for: the engines and clients only some commands use.
HEAVY = ("duckdb", "pyarrow", "pyspark", "confluent_kafka", "psycopg", "pandas", "numpy")


def mercato(
    *args: str, data_dir: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    full_env.pop("MERCATO_CONFIG", None)
    if data_dir is not None:
        full_env["MERCATO_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "mercato", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_help_lists_the_commands():
    result = mercato("--help")
    assert result.returncode == 0
    for command in ("demo", "run", "keys", "log", "config"):
        assert command in result.stdout


def imported_by(*args: str) -> set[str]:
    """The modules ``python -m mercato ARGS`` imports, as ``-X importtime`` reports them."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mercato", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.findall(r"^import time:\s+\d+ \|\s+\d+ \| +(\S+)$", result.stderr, re.M)
    assert "click" in found  # the report was read
    return set(found)


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]])
def test_help_imports_no_role_and_no_engine(args):
    modules = imported_by(*args)
    heavy = {m for m in modules if m.split(".")[0] in HEAVY}
    assert heavy == set()
    assert {m for m in modules if m.startswith("mercato")} <= {"mercato", "mercato.cli"}


def test_the_help_lists_every_command_with_its_own_help():
    for group, table in ((cli, COMMANDS), (cli.commands["run"], RUN)):
        listed = CliRunner().invoke(group, ["--help"], prog_name="mercato")
        assert listed.exit_code == 0, listed.output
        names = re.findall(r"^  (\S+)  ", listed.output.split("Commands:")[1], re.M)
        shown = {name for name, entry in table.items() if not entry.hidden}
        assert names == sorted(shown | ({"run"} if group is cli else set()))
        for name in shown:  # with the table's help (click shortens a long one)
            assert re.search(rf"^  {name} +{re.escape(table[name].help[:20])}", listed.output, re.M)
        for name, entry in table.items():
            command = load(entry)
            assert command.name == name, entry
            assert command.hidden == entry.hidden, entry
            # the table's help is the command's first sentence, as click shortens it
            assert command.get_short_help_str(10_000) == entry.help, entry
            # every command lives with its role (or, for config and demo, on its own)
            assert entry.target.split(":")[0].endswith("cli"), entry
            assert not entry.target.startswith("mercato.cli:"), entry


def every_command(
    command: click.Command = cli, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        context = click.Context(command)
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            assert sub is not None, name
            yield from every_command(sub, (*path, name))


def test_every_command_has_help_and_one_output_option():
    commands = list(every_command())
    assert len(commands) > 40
    for path, command in commands:
        assert command.help, path
        options = {name: p for p in command.params for name in getattr(p, "opts", [])}
        if "--json" in options:  # the older spelling of --format json, kept hidden
            json_option = options["--json"]
            assert isinstance(json_option, click.Option), path
            assert json_option.hidden, path
            assert "--format" in options, path
        if "--format" in options:
            choice = options["--format"].type
            assert isinstance(choice, click.Choice), path
            assert choice.choices[:2] == ("table", "json"), path
            assert set(choice.choices) <= {"table", "json", "csv"}, path
            assert options["--format"].default == "table", path
        help_page = CliRunner().invoke(cli, [*path, "--help"], prog_name="mercato")
        assert help_page.exit_code == 0, (path, help_page.output)
        assert "--json" not in help_page.output, path


def test_config_show_reflects_the_environment():
    result = mercato("config", "show", MERCATO_LOG_PARTITIONS="3")
    assert result.returncode == 0
    assert "partitions = 3" in result.stdout


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MERCATO_LOG_PARTITIONS": "lots"}, "log.partitions"),
        ({"MERCATO_LOGS": "1"}, "MERCATO_LOGS"),
    ],
)
def test_bad_config_is_one_line_not_a_traceback(env, named):
    result = mercato("config", "show", **env)
    assert result.returncode == 2
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_file_stops_a_role_at_start(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[collector]\nprot = 1\n")
    result = mercato("--config", str(config), "run", "collector")
    assert result.returncode == 2
    assert "collector.prot" in result.stderr
    assert "Traceback" not in result.stderr


def test_keys_create_list_revoke(tmp_path):
    created = mercato("keys", "create", "--source", "shop", data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    fields = dict(line.split(None, 1) for line in created.stdout.splitlines())
    assert fields["source"] == "shop"
    assert fields["key"].startswith("mk_")
    listed = mercato("keys", "list", data_dir=tmp_path)
    assert fields["id"] in listed.stdout
    assert fields["key"] not in listed.stdout
    assert mercato("keys", "revoke", fields["id"], data_dir=tmp_path).returncode == 0
    unknown = mercato("keys", "revoke", "wk_missing", data_dir=tmp_path)
    assert unknown.returncode == 1
    assert "wk_missing" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_keys_on_a_full_disk_are_one_line_and_leave_the_keys_as_they_were(small_disk):
    data = small_disk.path / "data"
    created = mercato("keys", "create", "--source", "shop", data_dir=data)
    assert created.returncode == 0, created.stderr
    before = (data / "keys.json").read_bytes()
    key_id = msgspec.json.decode(before)["keys"][0]["id"]
    small_disk.fill()
    for command in (["create", "--source", "web"], ["revoke", key_id]):
        full = mercato("keys", *command, data_dir=data)
        assert full.returncode == 1, full.stdout
        assert full.stderr.startswith("error: cannot save write keys to "), full.stderr
        assert "No space left on device" in full.stderr
        assert "Traceback" not in full.stderr
        assert len(full.stderr.strip().splitlines()) == 1
        assert "key " not in full.stdout  # no key shown that was never stored
    assert (data / "keys.json").read_bytes() == before
    assert not (data / "keys.tmp").exists()  # no partial copy left to take the space


def fill_log(data_dir: Path, count: int) -> None:
    config = load_config(env={"MERCATO_DATA_DIR": str(data_dir)})
    with closing(open_log(config)) as log:
        log.append([Record(f"m_{i % 5}", msgspec.json.encode({"n": i})) for i in range(count)])


def test_log_stats_tail_and_check(tmp_path):
    fill_log(tmp_path, 40)
    stats = mercato("log", "stats", "--format", "json", data_dir=tmp_path)
    assert stats.returncode == 0, stats.stderr
    partitions = msgspec.json.decode(stats.stdout)
    assert sum(p["end_offset"] for p in partitions) == 40
    alias = mercato("log", "stats", "--format", "table", "--json", data_dir=tmp_path)
    assert alias.stdout == stats.stdout  # the older --json, hidden, still works
    as_csv = mercato("log", "stats", "--format", "csv", data_dir=tmp_path)
    header, *rows = as_csv.stdout.splitlines()
    assert header.split(",")[:3] == ["partition", "start_offset", "end_offset"]
    assert [int(row.split(",")[2]) for row in rows] == [p["end_offset"] for p in partitions]

    tail = mercato("log", "tail", "-n", "2", data_dir=tmp_path)
    assert tail.returncode == 0, tail.stderr
    lines = [msgspec.json.decode(line) for line in tail.stdout.splitlines()]
    non_empty = sum(1 for p in partitions if p["end_offset"] > 0)
    assert len(lines) == 2 * non_empty
    assert all({"partition", "offset", "key", "value"} <= set(line) for line in lines)

    check = mercato("log", "check", data_dir=tmp_path)
    assert check.returncode == 0
    assert "healthy" in check.stdout


def test_log_check_reports_corruption(tmp_path):
    fill_log(tmp_path, 10)
    fill_log(tmp_path, 10)
    from mercato.log.segment import FRAME_HEADER_SIZE, segment_header_size

    (segment,) = (tmp_path / "log").glob("*.log")
    data = bytearray(segment.read_bytes())
    data[segment_header_size(8) + FRAME_HEADER_SIZE + 5] ^= 0x01  # first frame's payload
    segment.write_bytes(bytes(data))
    check = mercato("log", "check", data_dir=tmp_path)
    assert check.returncode == 1
    assert segment.name in check.stderr
    assert "Traceback" not in check.stderr


def test_log_commands_without_a_log(tmp_path):
    result = mercato("log", "stats", data_dir=tmp_path / "nothing")
    assert result.returncode == 1
    assert "no log" in result.stderr


def test_demo_runs_and_fills_the_log(tmp_path):
    result = mercato(
        "demo", "--duration", "3", "--rate", "500", "--data-dir", str(tmp_path / "demo")
    )
    assert result.returncode == 0, result.stderr
    assert "write key" in result.stdout
    acknowledged = int(result.stdout.split("generator: ")[1].split(" events")[0].replace(",", ""))
    assert acknowledged > 0
    config = load_config(env={"MERCATO_DATA_DIR": str(tmp_path / "demo")})
    with closing(open_log(config)) as log:
        assert sum(log.end_offset(p) for p in range(log.partitions)) == acknowledged


def test_ctrl_c_stops_the_demo_cleanly_and_revokes_its_key(tmp_path):
    data = tmp_path / "demo"
    for _ in range(2):  # the second run also finds the first run's key
        # as a terminal does: SIGINT to the whole foreground process group
        demo = subprocess.Popen(
            [sys.executable, "-m", "mercato", "demo", "--rate", "200", "--data-dir", str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert demo.stdout is not None
        seen = ""
        deadline = time.monotonic() + 120
        while "write key" not in seen and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            seen += line
        assert "write key" in seen, demo.stderr.read() if demo.stderr else ""
        time.sleep(2)  # traffic flowing, every role running
        os.killpg(demo.pid, signal.SIGINT)
        out, err = demo.communicate(timeout=120)
        assert demo.returncode == 0, err
        assert "error" not in err
        assert "stopped; see" not in out + err
    keys = KeyStore(data / "keys.json").list()
    assert [k.source for k in keys] == ["demo", "demo"]
    assert all(k.revoked_at is not None for k in keys)


@pytest.mark.parametrize("columns", ["60", "80", "200"])
def test_tables_fit_the_terminal_and_never_cut_a_number(tmp_path, columns):
    fill_log(tmp_path, 23_456)
    stats = msgspec.json.decode(
        mercato("log", "stats", "--format", "json", data_dir=tmp_path).stdout
    )
    table = mercato("log", "stats", data_dir=tmp_path, COLUMNS=columns)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert max(len(line) for line in lines) <= int(columns)
    assert "…" not in table.stdout
    cells = {cell.strip() for line in lines for cell in line.split("│")}
    for partition in stats:
        assert f"{partition['end_offset']:,}" in cells  # whole, in one cell
    if columns == "60":
        assert "left out to fit the terminal: " in table.stderr
    if columns == "200":
        assert table.stderr == ""  # every column shown


def test_a_negative_prune_age_is_refused(tmp_path):
    result = mercato("versions", "prune", "--days", "-1", data_dir=tmp_path)
    assert result.returncode == 2
    assert "-1.0 is not in the range x>=0" in result.stderr
    assert not (tmp_path / "store.sqlite3").exists()  # refused before anything opened


def test_an_error_naming_a_section_prints_it(tmp_path):
    # rich would read "[api]" as markup and print " has no portt"
    result = mercato("config", "show", data_dir=tmp_path, MERCATO_API_PORTT="1")
    assert result.returncode == 2
    assert "[api] has no portt" in result.stderr


def test_the_demo_uses_the_data_dir_every_command_uses(tmp_path):
    # no --data-dir: the demo runs where `mercato keys list` and `mercato log stats` look
    result = subprocess.run(
        [sys.executable, "-m", "mercato", "demo", "--duration", "2", "--rate", "200"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("MERCATO_")},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "commands   mercato log stats" in result.stdout
    stats = subprocess.run(
        [sys.executable, "-m", "mercato", "log", "stats", "--format", "json"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("MERCATO_")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert stats.returncode == 0, stats.stderr
    assert (tmp_path / "mercato-data" / "keys.json").exists()
    assert not (tmp_path / "mercato-demo").exists()


def test_the_demo_prints_commands_for_its_own_data_dir(tmp_path):
    data = tmp_path / "elsewhere"
    result = mercato("demo", "--duration", "2", "--rate", "200", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    assert f"MERCATO_DATA_DIR={data.resolve()} mercato log stats" in result.stdout
