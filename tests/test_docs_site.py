"""The documentation site builds strictly, and reads in a browser.

`mkdocs build --strict` (mkdocs.yml) fails on any warning, and mkdocs.yml turns every
kind of broken link (a missing page, a missing anchor) into a warning. The browser
test opens the built site in headless Chromium, as a reader would: from the front
page to the guide's chapter map, to its first chapter by the navigation, and on to
the next chapter by the footer's link, where a formula must be drawn (as MathML:
docs/hooks/mathml.py) and a code block shown.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of `config` into `site`."""
    mkdocs = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
              "--site-dir", str(site)]
    return subprocess.run(mkdocs, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    done = build(REPO / "mkdocs.yml", site)
    assert done.returncode == 0, done.stderr
    return site


def test_a_broken_link_fails_the_build(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "docs", copy / "docs")
    shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    shutil.copytree(REPO / "src", copy / "src")
    page = copy / "docs" / "guide" / "index.md"
    page.write_text(page.read_text() + "\nSee [the missing chapter](99-missing.md).\n")
    done = build(copy / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "99-missing.md" in done.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine "
                    "(.ci/run installs Debian's chromium package)")
def test_a_reader_goes_from_the_front_page_to_a_chapter_with_formulas(site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto((site / "index.html").as_uri())
        page.get_by_role("link", name="The guide", exact=True).first.click()
        assert page.url.endswith("guide/index.html")
        page.locator("article a[href='02-text-and-tokens.html']").first.click()  # the map
        assert page.url.endswith("guide/02-text-and-tokens.html")
        page.locator("a.md-footer__link--next").first.click()  # the footer's "Next" link
        assert page.url.endswith("guide/03-attention.html")
        formula = page.locator("math[display=block]").first
        formula.scroll_into_view_if_needed()
        box = formula.bounding_box()
        assert box is not None and box["height"] > 20 and box["width"] > 50  # drawn, not raw TeX
        assert "\\frac" not in page.inner_text("article")
        code = page.locator("pre code").first
        assert "import torch" in code.inner_text()
        browser.close()
