"""The command line as users run it: real `mercato` processes, no tracebacks for user errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from mercato.config import load_config
from mercato.log import open_log
from mercato.log.base import Record


def mercato(*args: str, data_dir: Path | None = None, **env: str) -> subprocess.CompletedProcess:
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
    with open_log(config) as log:
        log.append([Record(f"m_{i % 5}", msgspec.json.encode({"n": i})) for i in range(count)])


def test_log_stats_tail_and_check(tmp_path):
    fill_log(tmp_path, 40)
    stats = mercato("log", "stats", "--json", data_dir=tmp_path)
    assert stats.returncode == 0, stats.stderr
    partitions = msgspec.json.decode(stats.stdout)
    assert sum(p["end_offset"] for p in partitions) == 40

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
    with open_log(config) as log:
        assert sum(log.end_offset(p) for p in range(log.partitions)) == acknowledged
