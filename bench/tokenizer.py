"""Tokenizer benchmark: our BPE trainer and encoders beside Hugging Face tokenizers and tiktoken.

One run, on one corpus and one vocabulary size, prints a table of training
time and encoding throughput, each with its ratio to ours:

    .venv/bin/python bench/tokenizer.py                       # Shakespeare, 16,384 tokens
    .venv/bin/python bench/tokenizer.py --vocab-size 4096 --pattern gpt4
    .venv/bin/python bench/tokenizer.py --data 'books/*.txt' --json

What is compared (all on the same text):

- training: `train_bpe` (pure Python) and Hugging Face's Rust `BpeTrainer`
  with the same pre-tokenizer, special token and vocabulary size;
- encoding, with our trained vocabulary everywhere: our pure-Python
  `encode` (cold cache: a fresh tokenizer; warm: the same text again), our
  fast path `encode_batch` (tiktoken on all cores), the vocabulary exported to
  Hugging Face `tokenizers` (one string, and a batch of lines), and tiktoken
  called directly on one thread.

Times are wall-clock seconds (MB/s is computed from them) on whatever
machine runs this, plus the CPU seconds used by all threads; the header
prints the CPU, core count and load average, since a busy shared machine
slows everything. `--json` prints the same figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable

from llmscratch.tokenizer import Tokenizer, train_bpe
from llmscratch.tokenizer.hf_json import save_hf_tokenizer
from llmscratch.tokenizer.patterns import resolve_pattern


def timed(function: Callable[[], object]) -> tuple[tuple[float, float], object]:
    """(wall seconds, CPU seconds of all threads) one call takes, and what it returned."""
    started, cpu_started = time.perf_counter(), time.process_time()
    result = function()
    return (time.perf_counter() - started, time.process_time() - cpu_started), result


def load_corpus(patterns: list[str] | None) -> tuple[str, str]:
    """The benchmark text and a description of it."""
    if not patterns:
        from llmscratch.data.corpus import shakespeare_text

        return shakespeare_text(), "embedded Shakespeare corpus (cleaned)"
    from llmscratch.data.corpus import expand_paths, read_text_file

    paths = expand_paths(patterns)
    return "".join(read_text_file(path) for path in paths), f"{len(paths)} file(s)"


def train_hf(text: str, vocab_size: int, pattern: str):
    """Hugging Face's BPE trainer, set up like ours."""
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer(models.BPE())
    if pattern == "gpt2":
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(resolve_pattern(pattern)), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator([text], trainer=trainer)
    return hf


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            names = [
                line.split(":", 1)[1].strip() for line in file if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_1min": round(load, 2)}


def run(text: str, vocab_size: int, pattern: str, tmp_dir: str) -> list[dict]:
    """Every measurement, as rows of the table."""
    megabytes = len(text.encode("utf-8")) / 1e6
    lines = text.splitlines(keepends=True)
    rows = []

    def row(step: str, tool: str, seconds: tuple[float, float]) -> None:
        wall, cpu = seconds
        rows.append(
            {
                "step": step,
                "tool": tool,
                "seconds": round(wall, 3),
                "cpu_seconds": round(cpu, 3),
                "mb_per_s": round(megabytes / wall, 2),
            }
        )

    seconds, ours = timed(lambda: train_bpe([text], vocab_size, pattern))
    row("train", "llmscratch train_bpe (pure Python)", seconds)
    try:
        seconds, _ = timed(lambda: train_hf(text, vocab_size, pattern))
        row("train", "HF tokenizers BpeTrainer (Rust)", seconds)
    except ImportError:
        pass

    fresh = Tokenizer.load(ours.save(os.path.join(tmp_dir, "ours")))
    seconds, ids = timed(lambda: fresh.encode(text))
    row("encode", "llmscratch encode, pure Python, cold cache", seconds)
    seconds, _ = timed(lambda: fresh.encode(text))
    row("encode", "llmscratch encode, pure Python, warm cache", seconds)
    fresh.to_tiktoken()  # build the Rust encoder outside the timing
    seconds, fast_ids = timed(lambda: fresh.encode_batch([text])[0])
    assert fast_ids == ids, "fast path and pure path disagree"
    row("encode", f"llmscratch encode_batch, fast path ({os.cpu_count()} threads)", seconds)

    try:
        from tokenizers import Tokenizer as HFTokenizer

        hf = HFTokenizer.from_file(str(save_hf_tokenizer(ours.parts, os.path.join(tmp_dir, "hf"))))
        seconds, encoding = timed(lambda: hf.encode(text, add_special_tokens=False))
        assert encoding.ids == ids, "HF tokenizers and llmscratch disagree"
        row("encode", "HF tokenizers encode (one string)", seconds)
        seconds, _ = timed(lambda: hf.encode_batch(lines, add_special_tokens=False))
        row("encode", f"HF tokenizers encode_batch ({len(lines):,} lines)", seconds)
    except ImportError:
        pass
    encoding = ours.to_tiktoken()
    seconds, tiktoken_ids = timed(lambda: encoding.encode_ordinary(text))
    assert tiktoken_ids == ids, "tiktoken and llmscratch disagree"
    row("encode", "tiktoken encode_ordinary (one string, 1 thread)", seconds)
    return rows


def add_ratios(rows: list[dict]) -> None:
    """ratio = ours / theirs for speed: above 1 means ours is faster."""
    ours_train = next(r for r in rows if r["step"] == "train")["seconds"]
    ours_pure = next(r for r in rows if "warm" in r["tool"])["mb_per_s"]
    ours_fast = next(r for r in rows if "fast path" in r["tool"])["mb_per_s"]
    for r in rows:
        if r["step"] == "train":
            r["ours_speed_ratio"] = round(r["seconds"] / ours_train, 2)
        elif r["tool"].startswith("llmscratch"):
            r["ours_speed_ratio"] = 1.0
        else:
            r["ours_speed_ratio"] = round(ours_pure / r["mb_per_s"], 2)
            r["fast_path_speed_ratio"] = round(ours_fast / r["mb_per_s"], 2)


def print_table(result: dict) -> None:
    m = result["machine"]
    print(
        f"corpus: {result['corpus']}, {result['megabytes']:.2f} MB; vocab {result['vocab_size']}, "
        f"pattern {result['pattern']}\nmachine: {m['cpu']}, {m['cores']} cores, "
        f"load average {m['load_average_1min']} at start; Python {result['python']}\n"
    )
    print("| step | tool | seconds | CPU s | MB/s | ours (pure) vs this | ours (fast) vs this |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        fast = r.get("fast_path_speed_ratio")
        print(
            f"| {r['step']} | {r['tool']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
            f"{r['mb_per_s']:.2f} | "
            f"{r['ours_speed_ratio']:.2f}x | {f'{fast:.2f}x' if fast else ''} |"
        )
    print("\nratios: above 1 means llmscratch is faster (train: their time / ours; encode: "
          "our MB/s / theirs; pure = warm-cache encode)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark llmscratch's tokenizer against HF tokenizers and tiktoken.",
        epilog="example:\n  .venv/bin/python bench/tokenizer.py --vocab-size 16384 --json\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", nargs="+", help="text files or globs (default: Shakespeare)")
    parser.add_argument("--vocab-size", type=int, default=16384)
    parser.add_argument("--pattern", default="gpt2", choices=["gpt2", "gpt4"])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    import tempfile

    text, corpus = load_corpus(args.data)
    with tempfile.TemporaryDirectory() as tmp_dir:
        before = machine()
        rows = run(text, args.vocab_size, args.pattern, tmp_dir)
    add_ratios(rows)
    result = {
        "corpus": corpus,
        "megabytes": round(len(text.encode("utf-8")) / 1e6, 2),
        "vocab_size": args.vocab_size,
        "pattern": args.pattern,
        "machine": before,
        "python": platform.python_version(),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
