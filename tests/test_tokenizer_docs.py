"""The tokenizer guide's examples run: docs/tokenizer.md shows what the code does."""

from __future__ import annotations

import doctest
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "tokenizer.md"


def test_tokenizer_guide_examples_run():
    result = doctest.testfile(
        str(GUIDE), module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False
    )
    assert result.attempted > 10
    assert result.failed == 0
