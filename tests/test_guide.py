"""Every page of the guide runs as a notebook and prints what it shows (tests/guide_pages.py).

The pages run in order, in one folder, on one worker (`xdist_group`): a later page
may use what an earlier one made, as a learner following the guide would.
`make test-guide` runs this file alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guide_pages import (
    PAGES,
    as_on_screen,
    kernel_env,
    mismatches,
    missing_figures,
    run_page,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The learner's folder: every page runs here, in order."""
    return tmp_path_factory.mktemp("guide")


@pytest.mark.xdist_group("guide")
@pytest.mark.parametrize("page", PAGES, ids=[page.stem for page in PAGES])
def test_guide_page_runs_and_prints_what_it_shows(page: Path, workdir: Path):
    notebook = run_page(page, workdir)
    for code, got, shown in mismatches(notebook):
        pytest.fail(f"{page.name}: the cell\n{code}\nprinted\n{got}but the page shows\n{shown}"
                    "(python -m tests.guide_pages PAGE records what it prints)")
    assert missing_figures(notebook) == []


def test_command_output_reads_as_the_terminal_shows_it():
    # What `!llmscratch ...` wrote through Jupyter's pseudo-terminal: CR LF line ends, and a
    # progress bar redrawn after each CR, then a line written over the bar.
    raw = "start\r\nbar  0%\rbar 50%\rbar 100%\r\nbar 10%\r      \rplan: 38 steps\r\ndone\r\n"
    assert as_on_screen(raw) == "start\nbar 100%\nplan: 38 steps\ndone\n"


def test_pages_run_quick_and_on_one_thread_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("GUIDE_QUICK", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert (kernel_env()["GUIDE_QUICK"], kernel_env()["OMP_NUM_THREADS"]) == ("1", "1")
    monkeypatch.setenv("GUIDE_QUICK", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert (kernel_env()["GUIDE_QUICK"], kernel_env()["OMP_NUM_THREADS"]) == ("0", "2")
