"""Browser fixtures: Debian's Chromium driven by Playwright (never a downloaded browser), one fresh
browser context, so one fresh tab session, per test, against the dashboard Envoy serves."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from services.stack.stack import Stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--metrics-recording-only",
    "--no-first-run",
]
# Live updates arrive in milliseconds; this only bounds how long a broken page is waited on.
expect.set_options(timeout=20_000)


@pytest.fixture(scope="session")
def dashboard_url(stack: Stack) -> str:
    """The page Envoy serves at /; the bundle must have been built before the stack started (make web)."""
    url = f"http://127.0.0.1:{stack.edge_port}/"
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            html = reply.read().decode()
    except OSError as exc:
        pytest.fail(f"the dashboard is not served at {url} ({exc}); build it with `make web` before the tests")
    assert "app.js" in html, html
    return url


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make e2e-deps` installs Debian's chromium package")
    return CHROMIUM


@pytest_asyncio.fixture(scope="session")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), chromium_sandbox=False, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        await launched.close()


@pytest_asyncio.fixture
async def page(browser: Browser, dashboard_url: str) -> AsyncIterator[Page]:
    """A page in a context of its own; a script error on it fails the test."""
    context = await browser.new_context(base_url=dashboard_url, viewport={"width": 1440, "height": 1000})
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    await context.close()
    assert not errors, errors
