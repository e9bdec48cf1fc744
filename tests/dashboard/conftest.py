"""Browser tests: headless Chromium from the system's packages (never a downloaded browser)
driven by Playwright, against ``mercato run api`` on known data (:mod:`tests.serving`).

Screenshots go to ``tests/artifacts/dashboard/`` (ignored by git); the path is printed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.serving import ApiProcess, fill

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "no system Chromium: apt-get install -y chromium (Debian's package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


_used: list[Path] = []


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _used.append(ARTIFACTS)
    return ARTIFACTS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _used:
        terminalreporter.write_line(f"browser screenshots in {_used[0]}")


@pytest.fixture(scope="package")  # its event loop must be gone before other packages' tests
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Watched:
    """A page whose console errors and warnings, page errors and requests are collected.

    ``expect_refusals()`` lets through the one console error a test provokes on purpose:
    Chromium logs every 4xx answer to fetch() (a foreign token, a merchant at the console).
    """

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[str] = []
        self._refusals = False
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("request", lambda r: self.requests.append(r.url))
        self.responses: dict[str, Any] = {}
        page.on("response", lambda r: self.responses.__setitem__(_path(r.url), r))

    def _console(self, message: Any) -> None:
        if message.type not in ("error", "warning"):
            return
        refusal = "the server responded with a status of 40" in message.text
        if not (self._refusals and refusal):
            self.errors.append(f"console {message.type}: {message.text}")

    def expect_refusals(self) -> None:
        self._refusals = True

    def received(self, path: str) -> Any:
        """The JSON body of the page's latest answer from ``path`` (with its query)."""
        return self.responses[path].json()

    def api_calls(self, prefix: str) -> list[str]:
        """Paths (with query) of the calls the page made that start with ``prefix``."""
        return [path for path in map(_path, self.requests) if path.startswith(prefix)]


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def new_watched(browser: Any, width: int = 1280, height: int = 900) -> tuple[Any, Watched]:
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(20_000)
    return context, Watched(page)


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    context, page = new_watched(browser)
    yield page
    context.close()
    assert page.errors == []


class Known(NamedTuple):
    data: Path
    now: datetime


@pytest.fixture(scope="session")
def known(tmp_path_factory: pytest.TempPathFactory) -> Known:
    """A store filled once with known events (copied by each module's server)."""
    data = tmp_path_factory.mktemp("known")
    now = datetime.now(UTC)
    fill(data, now)
    return Known(data, now)


def serve_copy(known: Known, target: Path, **env: str) -> ApiProcess:
    """``mercato run api`` on a copy of the known data (tests may change their copy)."""
    shutil.copytree(known.data, target)
    return ApiProcess(target, env)
