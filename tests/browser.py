"""A real headless browser for the tests of circuitdag's HTML pages: selenium driving the
system's Chromium (Debian's ``chromium`` and ``chromium-driver``, which scripts/setup.sh
installs). No network: pages are opened from ``file://`` paths.

Use the ``browser`` fixture (one Chromium per test module), :func:`open_page` and
:func:`console_errors`. A missing browser fails these tests with the command that installs
it (a skipped test would check nothing).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_BROWSERS = ("chromium", "chromium-browser", "google-chrome")
_INSTALL = "install them with `bash scripts/setup.sh` (Debian/Ubuntu: apt-get install chromium chromium-driver)"


def _executables() -> tuple[str, str]:
    driver = shutil.which("chromedriver")
    binary = next((b for b in map(shutil.which, _BROWSERS) if b), None)
    if driver is None or binary is None:
        missing = " and ".join(n for n, p in (("chromium", binary), ("chromedriver", driver)) if p is None)
        pytest.fail(f"the browser tests need {missing}; {_INSTALL}", pytrace=False)
    return binary, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (selenium ``webdriver.Chrome``), 1400x900, recording the console."""
    binary, driver_path = _executables()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900", "--no-first-run", "--disable-extensions"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: Any, path: Path) -> None:
    """Load ``path`` (``file://``) and drop the console messages of earlier pages."""
    driver.get_log("browser")
    driver.get(Path(path).resolve().as_uri())


def console_errors(driver: Any) -> list[str]:
    """The console's errors (level SEVERE: uncaught exceptions, failed loads, console.error)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
