"""Run the guide's pages as notebooks, and record what they print and draw.

A page of `docs/guide/` is Markdown whose ```python blocks are, to jupytext, the
cells of a notebook. `run_page` turns a page into that notebook and runs it in a
Jupyter kernel (nbclient): what passes here is what a learner runs in Jupyter.

A ```text block directly after a code block is what that code prints (stdout, and
the value of its last line, as Jupyter shows it). `mismatches` compares them, with
doctest's rules: `...` stands for any text, and runs of spaces and line breaks
count as one space. An image line `![...](images/PAGE-N.png)` after a code block
is the figure that block draws.

    python -m tests.guide_pages [PAGE ...]    # rewrite the pages' outputs and figures
    GUIDE_QUICK=0 OMP_NUM_THREADS=2 python -m tests.guide_pages --figures-only --keep DIR
                     # the full versions' figures and times; their notebooks, run, in DIR

re-runs pages (all by default) in a temporary folder, rewrites each ```text block
that no longer matches with what its code printed, and saves each drawing cell's
figure under docs/guide/images/. That is the only way outputs and figures get onto
a page: none is typed by hand.

The figures on the pages come from the full versions (what a learner runs), the
printed outputs from the quick ones (what the tests check): `--figures-only` saves
the figures and leaves the text alone. Each page's time is printed as it finishes,
which is how the pages' full-mode times were measured.
"""

from __future__ import annotations

import argparse
import base64
import doctest
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbclient
import nbformat

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide"
PAGES = sorted(GUIDE.glob("[0-9][0-9]-*.md"))
CHECKER = doctest.OutputChecker()
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
TEXT_BLOCK = re.compile(r"\A```text\n(.*?)^```", re.DOTALL | re.MULTILINE)
IMAGE = re.compile(r"\A!\[[^\]]*\]\((images/[^)]+\.png)\)")


def kernel_env() -> dict[str, str]:
    """The environment the pages run in (their kernel, and the commands they start).

    The kernel runs this interpreter, with this checkout's sources first on its path, and
    finds the `llmscratch` command beside it. GUIDE_QUICK=1 asks the pages for their quick
    versions: short training runs, as each page says. OMP_NUM_THREADS=1: the quick
    versions' models are tiny, and on a busy 2-core machine two threads per process spent
    most of their CPU time waiting for each other (chapters 2, 4, 5 and appendix D: 119 s
    of CPU with PyTorch's default of 2 threads, 55 s with 1). Either may be set otherwise.
    """
    return dict(os.environ, GUIDE_QUICK=os.environ.get("GUIDE_QUICK", "1"),
                OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
                PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
                MPLBACKEND="module://matplotlib_inline.backend_inline")


def run_page(page: Path, workdir: Path):
    """Execute `page` as a notebook in `workdir`; returns the executed notebook."""
    notebook = jupytext.read(page)
    client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute(env=kernel_env())
    return notebook


def printed(cell) -> str:
    """What a code cell printed: its stdout, then its last line's value."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream" and output.name == "stdout":
            parts.append(output.text)
        elif output.output_type == "execute_result":
            parts.append(output.data.get("text/plain", "") + "\n")
    return as_on_screen("".join(parts))


def as_on_screen(text: str) -> str:
    """`text` as a terminal leaves it: a command run with `!` writes through a pseudo-terminal,
    so its lines end in "\\r\\n", and a progress bar redraws its line after each "\\r";
    only the last drawing of each line stays."""
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines)


def figure(cell) -> bytes | None:
    """The last PNG a code cell drew, if any."""
    pngs = [output.data["image/png"] for output in cell.get("outputs", [])
            if output.output_type in ("display_data", "execute_result")
            and "image/png" in output.data]
    return base64.b64decode(pngs[-1]) if pngs else None


def shown_after(notebook):
    """(code cell, the Markdown cell after it) for each code cell followed by Markdown."""
    cells = notebook.cells
    return [(cell, after) for cell, after in zip(cells, cells[1:], strict=False)
            if cell.cell_type == "code" and after.cell_type == "markdown"]


def mismatches(notebook) -> list[tuple[str, str, str]]:
    """(code, printed, shown) for each code cell whose ```text block is not what it printed."""
    wrong = []
    for cell, after in shown_after(notebook):
        block = TEXT_BLOCK.match(after.source)
        if block and not CHECKER.check_output(block.group(1), printed(cell), FLAGS):
            wrong.append((cell.source, printed(cell), block.group(1)))
    return wrong


def missing_figures(notebook) -> list[str]:
    """Image lines after code cells that drew nothing."""
    return [image.group(1) for cell, after in shown_after(notebook)
            if (image := IMAGE.match(after.source)) and figure(cell) is None]


def record(page: Path, notebook, text_too: bool = True) -> None:
    """Rewrite `page`'s stale ```text blocks with what was printed, and save its figures."""
    text = page.read_text(encoding="utf-8")
    for code, got, shown in mismatches(notebook) if text_too else []:
        old = f"```python\n{code}\n```\n\n```text\n{shown}```"
        assert text.count(old) == 1, f"{page.name}: cannot place the output of\n{code}"
        text = text.replace(old, f"```python\n{code}\n```\n\n```text\n{got}```")
    page.write_text(text, encoding="utf-8")
    for cell, after in shown_after(notebook):
        if (image := IMAGE.match(after.source)) and (png := figure(cell)) is not None:
            (GUIDE / image.group(1)).parent.mkdir(exist_ok=True)
            (GUIDE / image.group(1)).write_bytes(png)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.guide_pages",
                                     description="Run the guide's pages; record their outputs.")
    parser.add_argument("pages", nargs="*", type=Path, help="pages to record (default: all)")
    parser.add_argument("--figures-only", action="store_true",
                        help="save the figures, leave the printed outputs as they are")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="also write each executed notebook, outputs and all, into DIR")
    args = parser.parse_args(argv)
    pages = [page.resolve() for page in args.pages] or PAGES
    with tempfile.TemporaryDirectory() as workdir:
        # Earlier pages run too: a page may use what they made.
        for page in [page for page in PAGES if page <= max(pages)]:
            start = time.perf_counter()
            notebook = run_page(page, Path(workdir))
            seconds = time.perf_counter() - start
            if page in pages:
                record(page, notebook, text_too=not args.figures_only)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                nbformat.write(notebook, args.keep / f"{page.stem}.ipynb")
            print(f"{'recorded' if page in pages else 'ran'} {page.name} in {seconds:.0f} s",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
