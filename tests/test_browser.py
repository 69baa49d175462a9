"""The built book in headless Chromium: pages load cleanly, figures load, Colab links are real, and no
page shows widget controls that need a kernel (dead on a static page)."""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from pathlib import Path

import pytest
from conftest import ROOT, toc_files

pytestmark = [pytest.mark.book, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: What a live ipywidgets output leaves on a static page: its view script and any rendered control.
DEAD_WIDGET_SELECTORS = (
    'script[type="application/vnd.jupyter.widget-view+json"]',
    ".jupyter-widgets",
    ".widget-slider",
    ".widget-dropdown",
    ".widget-text",
    ".widget-inline-hbox",
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server(built_book: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: `make browser-deps` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.mark.parametrize("page_name", toc_files())
def test_page_loads_cleanly(server: str, browser, page_name: str, built_book: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    response = page.goto(f"{server}/{page_name}.html", wait_until="load")
    assert response is not None and response.ok, f"{page_name}.html did not load"
    assert not errors, f"JavaScript errors on {page_name}: {errors}"

    body = page.inner_text("body")
    assert "Traceback (most recent call last)" not in body, f"{page_name} shows a traceback"
    assert page.locator(".output.error, .output.traceback, .system-message, .problematic").count() == 0, (
        f"{page_name} shows error output"
    )

    images = page.eval_on_selector_all(
        "article img", "els => els.map(e => [e.currentSrc || e.src, e.complete && e.naturalWidth > 0])"
    )
    dead = {sel: n for sel in DEAD_WIDGET_SELECTORS if (n := page.locator(sel).count())}
    assert not dead, f"{page_name} shows widget controls that do nothing on a static page: {dead}"

    broken = [src for src, ok in images if not ok]
    assert not broken, f"images that did not load on {page_name}: {broken}"
    if (ROOT / f"{page_name}.ipynb").exists():
        source = (ROOT / f"{page_name}.ipynb").read_text()
        if "plt." in source or "matplotlib" in source:
            assert images, f"{page_name} draws figures but the page shows none"
        hrefs = page.eval_on_selector_all("a[href*='colab.research.google.com']", "els => els.map(e => e.href)")
        assert hrefs, f"{page_name} has no Colab launch link"
        for href in hrefs:
            m = re.search(r"colab\.research\.google\.com/github/([^/]+)/([^/]+)/blob/([^/]+)/(.+\.ipynb)$", href)
            assert m, f"Colab link not of the form .../github/<org>/<repo>/blob/<branch>/<path>.ipynb: {href}"
            assert "//" not in m.group(4), f"Colab link has an empty path segment: {href}"
            assert (ROOT / m.group(4)).exists(), f"Colab link points at a file that is not in the repo: {href}"
    shots = built_book.parent / "screenshots"
    shots.mkdir(exist_ok=True)
    page.screenshot(path=str(shots / f"{page_name.replace('/', '_')}.png"), full_page=False)
    page.close()


@pytest.fixture(scope="module")
def widget_book(tmp_path_factory) -> Path:
    """A two-page book built like ours: the same widget cell, tagged remove-output on one page
    (the book's mechanism for live controls) and untagged on the other (the bug it prevents)."""
    import os
    import subprocess
    import sys

    import nbformat

    src = tmp_path_factory.mktemp("widget-book")
    (src / "_config.yml").write_text("title: widgets\nexecute:\n  execute_notebooks: force\n")
    (src / "_toc.yml").write_text("format: jb-book\nroot: hidden\nchapters:\n  - file: shown\n")
    for name, tags in (("hidden", ["remove-output"]), ("shown", [])):
        cell = nbformat.v4.new_code_cell(
            "import ipywidgets as w\nw.VBox([w.IntSlider(description='batch'), w.Dropdown(options=['a', 'b'])])"
        )
        cell.metadata["tags"] = tags
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {name}"), cell])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, src / f"{name}.ipynb")
    subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(src)],
        check=True,
        capture_output=True,
        timeout=900,
        env={**os.environ, "DMCOURSE_PROGRESS": "0"},
    )
    return src / "_build" / "html"


@pytest.mark.slow
def test_dead_widget_check_catches_live_controls_and_the_tag_hides_them(widget_book: Path, browser) -> None:
    found = {}
    for name in ("hidden", "shown"):
        page = browser.new_page()
        page.goto((widget_book / f"{name}.html").as_uri(), wait_until="load")
        found[name] = {sel: n for sel in DEAD_WIDGET_SELECTORS if (n := page.locator(sel).count())}
        page.close()
    assert found["shown"], "the check finds no widget on a page that shows one: it would miss dead controls"
    assert not found["hidden"], f"remove-output left widget controls on the static page: {found['hidden']}"
