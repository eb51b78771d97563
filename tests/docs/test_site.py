"""The built documentation, opened in headless Chromium with the network cut off: every
page renders its math (MathJax bundled, no raw ``\\(``), loads its images and asks for
nothing outside the site.

Runs from ``make docs`` (which builds the site and sets ``PYROVI_SITE``); skipped elsewhere.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest

SITE = os.environ.get("PYROVI_SITE")
pytestmark = pytest.mark.skipif(not SITE, reason="run by `make docs` on a built site")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _pages() -> list[pathlib.Path]:
    if not SITE:
        return []
    root = pathlib.Path(SITE).resolve()
    return sorted(p for p in root.rglob("index.html") if "search" not in p.parts)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.fail("chromium is not installed; `make docs` installs it with apt-get")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def test_the_site_has_its_pages():
    names = {str(p.relative_to(pathlib.Path(SITE).resolve())) for p in _pages()}
    assert {"index.html", "theory/index.html", "api/reference/index.html"} <= names
    assert len(names) >= 15


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(pathlib.Path(SITE).resolve())))
def test_page_renders_offline(browser, page):
    tab = browser.new_page()
    outside: list[str] = []

    def refuse(route):
        outside.append(route.request.url)
        route.abort()

    tab.route("http*://**", refuse)
    failed: list[str] = []
    tab.on("requestfailed", lambda r: failed.append(r.url))
    tab.goto(page.as_uri(), wait_until="load")
    has_math = tab.evaluate("document.querySelectorAll('.arithmatex').length") > 0
    if has_math:
        tab.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise")
        tab.evaluate("MathJax.startup.promise")
        assert tab.locator("mjx-container").count() > 0
    text = tab.inner_text("body")
    assert "\\(" not in text and "\\[" not in text, "raw TeX left on the page"
    broken = tab.evaluate(
        "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.getAttribute('src'))"
    )
    assert broken == []
    assert outside == [], f"the page asked the network for {outside}"
    assert [u for u in failed if u.startswith("file:")] == []
    tab.close()
