"""Every ``mercato`` that the package, a test or a benchmark starts is this interpreter's
(``sys.executable -m mercato``), never one looked up on PATH: the README's commands run in a
fresh clone with the venv not activated, where PATH holds no ``mercato``."""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# names of calls that start a program (subprocess, os, asyncio, a runner's run) or find one
STARTERS = {
    "run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput",
    "system", "popen", "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp",
    "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp",
    "spawnlpe", "posix_spawn", "posix_spawnp", "create_subprocess_exec",
    "create_subprocess_shell", "which",
}  # fmt: skip
# tests that start mercato processes in several ways: keys commands, a running collector,
# the scheduler's runner
STARTING_TESTS = [
    "tests/collector/test_server.py::test_revoked_key_is_refused_by_a_running_collector",
    "tests/scheduler/test_jobs.py::test_a_mercato_command_runs_with_the_config_file",
    "tests/test_cli.py::test_keys_create_list_revoke",
]


def names_mercato(node: ast.expr, lists: dict[str, list[ast.expr]]) -> bool:
    """Whether ``node``, a program to start, is ``mercato`` by bare name."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.split(" ", 1)[0] == "mercato"  # also a shell command line
    if isinstance(node, ast.List | ast.Tuple):
        return bool(node.elts) and names_mercato(node.elts[0], lists)
    if isinstance(node, ast.Name):
        return any(names_mercato(value, lists) for value in lists.get(node.id, []))
    return False


def bare_starts(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), str(path))
    lists: dict[str, list[ast.expr]] = {}  # every value assigned to a name, in the module
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    lists.setdefault(target.id, []).append(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            lists.setdefault(node.target.id, []).append(node.value)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in STARTERS and names_mercato(node.args[0], lists):
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            yield f"{where}:{node.lineno}: {ast.unparse(node)[:100]}"


def test_nothing_starts_a_mercato_found_on_path() -> None:
    sources = [p for top in ("mercato", "tests", "bench") for p in (ROOT / top).rglob("*.py")]
    assert len(sources) > 100
    found = [line for path in sorted(sources) for line in bare_starts(path)]
    assert found == [], "start `sys.executable -m mercato` instead:\n" + "\n".join(found)


def test_the_check_finds_a_bare_mercato(tmp_path: Path) -> None:
    example = tmp_path / "example.py"
    example.write_text(
        "import shutil, subprocess\n"
        'subprocess.run(["mercato", "keys", "list"], check=True)\n'
        'command = ("mercato", "seal")\n'
        "subprocess.Popen(command)\n"
        'shutil.which("mercato")\n'
        'subprocess.run(["python", "-m", "mercato"])\n'
    )
    assert [line.split(":")[1] for line in bare_starts(example)] == ["2", "4", "5"]


@pytest.mark.slow
def test_tests_that_start_mercato_pass_with_no_runnable_mercato_on_path(tmp_path: Path) -> None:
    # a `mercato` first on PATH that refuses to run, whatever else PATH holds (an activated
    # venv, a mercato installed elsewhere): as on a fresh machine, none can be used
    stub = tmp_path / "bin" / "mercato"
    stub.parent.mkdir()
    stub.write_text(f"#!/bin/sh\necho \"mercato started from PATH: $0 $*\" >> {tmp_path}/started\n"
                    "exit 127\n")  # fmt: skip
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{stub.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *STARTING_TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"{len(STARTING_TESTS)} passed" in result.stdout
    assert not (tmp_path / "started").exists(), (tmp_path / "started").read_text()
