"""Debian's Chromium, driven by Playwright, for the console's browser tests.

Playwright's own browser download cannot work here, so it launches /usr/bin/chromium. Outside CI a
missing browser skips the test with the reason; in CI (CI=true) it fails: .ci/run installs it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "console"


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing in CI (.ci/run installs it)")
    pytest.skip(
        f"{what} is not installed here (apt-get install chromium; pip install -e '.[test]')"
    )


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("the playwright package")
    if not CHROMIUM.exists():
        _missing(f"Chromium ({CHROMIUM})")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def screenshot(page: Any, name: str) -> None:
    """Write docs/console/<name>.png, only when UPDATE_SCREENSHOTS=1 (normal runs leave the tree)."""
    if os.environ.get("UPDATE_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
