"""The dashboard over the edge's TLS listener, in Chromium trusting the stack's development CA.

Chromium on Linux trusts what the NSS database in $HOME/.pki/nssdb holds: each browser here gets a HOME of
its own, with the CA imported by `certutil` (Debian's libnss3-tools) or not at all. Certificate errors are
never ignored: the untrusting browser shows the check is real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, Error, async_playwright, expect

from services.edge.certs import CA_NAME
from services.stack.stack import Stack
from tests.e2e.conftest import CHROMIUM_ARGS
from tests.e2e.dashboard import rows, sign_up, submit

pytestmark = pytest.mark.e2e

CERTUTIL = shutil.which("certutil") or "/usr/bin/certutil"


def _nss_home(home: Path, ca_file: Path | None) -> Path:
    """A HOME whose NSS database trusts ca_file to identify servers (or trusts nothing of ours)."""
    database = home / ".pki" / "nssdb"
    database.mkdir(parents=True)
    subprocess.run([CERTUTIL, "-d", f"sql:{database}", "-N", "--empty-password"], check=True, timeout=60)
    if ca_file is not None:
        add = [CERTUTIL, "-d", f"sql:{database}", "-A", "-t", "C,,", "-n", "rtask-dev", "-i", str(ca_file)]
        subprocess.run(add, check=True, timeout=60)
    return home


@asynccontextmanager
async def chromium_with_home(chromium: Path, home: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium),
            chromium_sandbox=False,
            headless=True,
            args=CHROMIUM_ARGS,
            env={**os.environ, "HOME": str(home)},
        )
        try:
            yield browser
        finally:
            await browser.close()


def _tls_url(stack: Stack) -> str:
    return f"https://localhost:{stack.edge_tls_port}/"


async def test_the_dashboard_works_over_tls_in_chromium_trusting_the_ca(
    stack: Stack, chromium: Path, tmp_path: Path
) -> None:
    home = _nss_home(tmp_path / "home", stack.ca_file)
    async with chromium_with_home(chromium, home) as browser:
        context = await browser.new_context(base_url=_tls_url(stack))
        try:
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            opened = await page.goto("/")
            assert opened is not None and opened.ok
            details = await opened.security_details()
            assert details is not None and details.get("issuer") == CA_NAME, details
            # Signing up, the live feed (a grpc-web server stream) and a task's run all go over TLS.
            await sign_up(page)
            await submit(page, "over tls", workload_s="0.2")
            await expect(rows(page, "over tls", "SUCCEEDED")).to_have_count(1)
            assert await page.evaluate("() => location.protocol") == "https:"
            assert not errors, errors
        finally:
            await context.close()


async def test_chromium_without_the_ca_refuses_the_edge(stack: Stack, chromium: Path, tmp_path: Path) -> None:
    home = _nss_home(tmp_path / "home", None)
    async with chromium_with_home(chromium, home) as browser:
        context = await browser.new_context(base_url=_tls_url(stack))
        try:
            page = await context.new_page()
            with pytest.raises(Error, match="ERR_CERT_AUTHORITY_INVALID"):
                await page.goto("/")
        finally:
            await context.close()
