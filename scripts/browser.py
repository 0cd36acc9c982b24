"""Chromium through Playwright, offline: how the browser tests open the report and the UIs, and how
`python -m scripts.browser` renders the README's screenshot of reports/index.html.

Debian's chromium (/usr/bin/chromium), never Playwright's browser download. Without these flags chromium reaches
for the network at start (updates, sync, QUIC) and fails on a closed machine; without --no-sandbox it refuses
to run as root."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from playwright.sync_api import Browser, Page, Route, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
VIEWPORT = {"width": 1280, "height": 900}


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's chromium, headless, closed when the block ends."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(FLAGS))
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Visit:
    """What a page did while open: requests it made and was refused, console errors, uncaught exceptions."""

    requested: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextlib.contextmanager
def offline_page(browser: Browser, allowed: Callable[[str], bool]) -> Iterator[tuple[Page, Visit]]:
    """A fresh page whose requests `allowed` refuses are aborted and recorded (a page that needs the network
    shows it here, not as a half-drawn screen), with its console errors and uncaught exceptions recorded too."""
    context = browser.new_context(viewport=VIEWPORT, service_workers="block")
    visit = Visit()

    def route(route: Route) -> None:
        url = route.request.url
        visit.requested.append(url)
        if allowed(url):
            route.continue_()
        else:
            visit.blocked.append(url)
            route.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda msg: visit.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: visit.errors.append(f"exception: {exc}"))
    try:
        yield page, visit
    finally:
        context.close()


def open_report(page: Page, index: Path, timeout_ms: float = 120_000) -> float:
    """Open the report page and wait until every plotly figure has drawn; the seconds that took."""
    start = time.monotonic()
    page.goto(index.resolve().as_uri(), wait_until="load", timeout=timeout_ms)
    page.wait_for_function("[...document.querySelectorAll('.plotly-graph-div')]"
                           ".every(div => div.classList.contains('js-plotly-plot'))", timeout=timeout_ms)
    return time.monotonic() - start


def loaded_bytes(visit: Visit) -> int:
    """Bytes of every local file the page loaded, the page included (what a reader's browser reads)."""
    files = {Path(unquote(urlparse(url).path)) for url in visit.requested if url.startswith("file://")}
    return sum(path.stat().st_size for path in files)


def main() -> None:
    parser = argparse.ArgumentParser(description="Full-page screenshot of the report, opened offline in chromium.")
    parser.add_argument("index", nargs="?", type=Path, default=Path("reports/index.html"))
    parser.add_argument("out", nargs="?", type=Path, default=Path("reports/screenshot.png"))
    args = parser.parse_args()
    if not args.index.exists():
        raise SystemExit(f"{args.index}: no report to look at (`make run` builds it)")
    with chromium() as browser, offline_page(browser, lambda url: url.startswith("file://")) as (page, visit):
        seconds = open_report(page, args.index)
        page.screenshot(path=str(args.out), full_page=True)
    print(f"{args.out}: {args.index} ({loaded_bytes(visit) / 1e6:.1f} MB loaded) drawn in {seconds:.1f} s")
    for problem in [f"blocked: {url}" for url in visit.blocked] + visit.errors:
        print(f"  {problem}", file=sys.stderr)
    if visit.blocked or visit.errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
