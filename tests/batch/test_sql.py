"""`mercato sql`: DuckDB over the committed archive, as users run it."""

from __future__ import annotations

from pathlib import Path

import msgspec

from mercato.config import load_config
from mercato.log import open_log
from tests.batch.test_seal import run_archiver, traffic
from tests.test_cli import mercato


def test_sql_over_the_archive_in_three_formats(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = load_config(env={"MERCATO_DATA_DIR": str(data), "MERCATO_LOG_FSYNC": "false"})
    records = traffic(1_000)
    log = open_log(config)
    log.append(records)
    run_archiver(log, config.archive_path)
    log.close()
    query = (
        "SELECT count(*) AS rows, count(DISTINCT merchant_id || event_id) AS events,"
        " min(date) AS first_day FROM events"
    )
    result = mercato("sql", query, "--format", "json", data_dir=data)
    assert result.returncode == 0, result.stderr
    (row,) = msgspec.json.decode(result.stdout)
    assert row["rows"] == len(records)
    assert row["events"] == 1_000
    assert str(row["first_day"]).startswith("2026-11-20")

    csv = mercato("sql", "SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type",
                  "--format", "csv", data_dir=data)  # fmt: skip
    assert csv.returncode == 0, csv.stderr
    lines = csv.stdout.splitlines()
    assert lines[0] == '"type","n"'
    assert len(lines) == 5

    table = mercato("sql", "SELECT sum((properties->>'amount')::BIGINT) AS amount FROM events",
                    data_dir=data)  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "amount" in table.stdout

    bad = mercato("sql", "SELECT nope FROM events", data_dir=data)
    assert bad.returncode == 1
    assert "nope" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_sql_on_an_empty_archive(tmp_path: Path) -> None:
    result = mercato("sql", "SELECT count(*) AS n FROM events", "--format", "json",
                     data_dir=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert msgspec.json.decode(result.stdout) == [{"n": 0}]
