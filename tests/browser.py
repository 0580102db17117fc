"""Drive ``leafseg serve`` in Debian's chromium with playwright: shared by the browser test and the script that
draws the app's screenshot for the docs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# flags that keep chromium from calling Google's hosts on a machine without a network (refused, slow starts)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(model: Path, log: Path, *extra: str, timeout: float = 180.0):
    """``leafseg serve --model MODEL`` on a free port of 127.0.0.1 for the block; yields the page's URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "leafseg.cli", "serve", "--model", str(model),
                                   "--port", str(port), *extra], stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
        try:
            deadline = time.monotonic() + timeout
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"leafseg serve exited ({server.returncode}): {log.read_text()[-2000:]}")
                try:
                    urllib.request.urlopen(url, timeout=2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        tail = log.read_text()[-2000:]
                        raise TimeoutError(f"leafseg serve did not answer on {url}: {tail}") from None
                    time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


@contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    """A headless chromium page (downloads allowed) and the list of every URL it requested."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(accept_downloads=True, viewport={"width": width, "height": height})
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            yield page, requested
        finally:
            browser.close()


def set_number(page, elem_id: str, value) -> None:
    """Type a value into the number box of a gradio slider or number field."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def segment(page, url: str, files: list[Path], timeout_ms: int = 120_000, **numbers) -> None:
    """Open the page, drop ``files``, set the number fields by elem_id (steps, ensemble, seed, threshold) and press
    Segment."""
    page.goto(url)
    page.locator("#input-files input[type=file]").set_input_files([str(f) for f in files], timeout=timeout_ms)
    page.wait_for_timeout(500)
    for elem_id, value in numbers.items():
        set_number(page, elem_id, value)
    page.locator("#segment").click()


def download_mask(page, target: Path, timeout_ms: int = 120_000) -> Path:
    """Wait for the mask file of the result and download it to ``target``."""
    link = page.locator("#mask-file a[download]").first
    link.wait_for(timeout=timeout_ms)
    with page.expect_download(timeout=timeout_ms) as download:
        link.click()
    download.value.save_as(target)
    return target
