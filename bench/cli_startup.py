"""How long ``mercato --help`` takes to start: wall time of the process, and the import time
``python -X importtime`` reports (the sum of the top-level imports' cumulative times).

Runs ``python -m mercato ARGS`` from each checkout given (its directory first on the path, so
two worktrees compare back to back on the same machine and interpreter), ``--runs`` times
each, interleaved so that a machine busy with other work slows both alike. Prints one JSON
document: min/median/max milliseconds per checkout, and the modules that took longest.

    python bench/cli_startup.py [--runs 15] [--args "--help"] CHECKOUT [CHECKOUT ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchstats import summary

LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$", re.M)


def start(checkout: Path, args: list[str], importtime: bool) -> tuple[float, str]:
    """One run: its wall time in ms, and its stderr."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    env.pop("MERCATO_CONFIG", None)
    flags = ["-X", "importtime"] if importtime else []
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *flags, "-m", "mercato", *args],
        cwd=checkout, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return (time.perf_counter() - began) * 1000, result.stderr


def import_ms(report: str) -> tuple[float, list[tuple[str, float]]]:
    """The total import time in ms (top-level imports' cumulative times) and the ten
    slowest top-level imports."""
    top = [(name, int(cumulative) / 1000) for _, cumulative, indent, name in LINE.findall(report)
           if len(indent) == 1]  # fmt: skip
    return sum(ms for _, ms in top), sorted(top, key=lambda t: -t[1])[:10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--args", default="--help", help="mercato's arguments")
    options = parser.parse_args()
    args = shlex.split(options.args)
    walls: dict[Path, list[float]] = {c: [] for c in options.checkouts}
    imports: dict[Path, list[float]] = {c: [] for c in options.checkouts}
    slowest: dict[Path, list[tuple[str, float]]] = {}
    for checkout in options.checkouts:  # once each first: disk caches warm alike
        start(checkout, args, importtime=False)
    for _ in range(options.runs):
        for checkout in options.checkouts:
            walls[checkout].append(start(checkout, args, importtime=False)[0])
            total, slowest[checkout] = import_ms(start(checkout, args, importtime=True)[1])
            imports[checkout].append(total)
    print(
        json.dumps(
            {
                "command": ["python", "-m", "mercato", *args],
                "runs": options.runs,
                "checkouts": {
                    str(c): {
                        "wall_ms": summary(walls[c]),
                        "import_ms": summary(imports[c]),
                        "slowest_imports_ms": dict(slowest[c]),
                    }
                    for c in options.checkouts
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
