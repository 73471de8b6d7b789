"""`llmscratch tokenizer ...`: train, encode, decode, inspect and convert tokenizers.

This module imports neither torch nor the model, so tokenizer commands
start in a fraction of a second.

Wherever a tokenizer is named (``--tokenizer``), it may be the built-in
``gpt2``, a directory holding ``tokenizer.json``, a ``tokenizer.json`` file
(ours or Hugging Face's) or a ``.tiktoken`` rank file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmscratch.cli.common import add_command, add_group
from llmscratch.data.corpus import expand_paths, shakespeare_text
from llmscratch.data.text_files import check_files, iter_files
from llmscratch.errors import LLMScratchError
from llmscratch.io import parse_json
from llmscratch.tokenizer import open_tokenizer, train_bpe
from llmscratch.tokenizer.display import inspect_text, render_tokens
from llmscratch.tokenizer.hf_json import save_hf_tokenizer
from llmscratch.tokenizer.openai_files import save_tiktoken_file
from llmscratch.tokenizer.patterns import resolve_pattern


def register(subparsers) -> None:
    """Add ``tokenizer`` and its sub-commands to an argparse sub-parser set."""
    commands = add_group(
        subparsers, "tokenizer",
        "Byte-level BPE tokenizers: train your own, or use GPT-2's offline.",
        "  llmscratch tokenizer train --vocab-size 4096 --out runs/tok\n"
        "  echo 'To be, or not to be' | llmscratch tokenizer encode --tokenizer gpt2\n"
        "  llmscratch tokenizer inspect --tokenizer runs/tok --text 'Wherefore art thou'\n",
        dest="tokenizer_command")
    _add_train(commands)
    _add_encode(commands)
    _add_decode(commands)
    _add_inspect(commands)
    _add_convert(commands)


def _add_tokenizer_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokenizer",
        default="gpt2",
        metavar="DIR|FILE|gpt2",
        help="gpt2 (built in, offline), a tokenizer directory, tokenizer.json or .tiktoken "
        "(default: gpt2)",
    )
    parser.add_argument(
        "--pattern",
        default="gpt2",
        help="pre-tokenizer of a .tiktoken file, which does not store one (default: gpt2)",
    )


def _add_train(commands) -> None:
    p = add_command(
        commands,
        "train",
        "Train a byte-level BPE tokenizer on text files (default: the Shakespeare corpus).",
        "  llmscratch tokenizer train --out runs/tok\n"
        "  llmscratch tokenizer train --data 'books/*.txt' --vocab-size 16384 "
        "--pattern gpt4 --out runs/books-tok\n"
        "  llmscratch tokenizer train --data notes/ --special '<|endoftext|>' "
        "--special '<|pad|>' --out runs/tok2 --json\n",
    )
    p.add_argument("--data", nargs="+", metavar="FILE", help="text files, directories or globs")
    p.add_argument("--vocab-size", type=int, default=4096, help="total ids (default: 4096)")
    p.add_argument(
        "--pattern", default="gpt2", help="pre-tokenizer: gpt2, gpt4 or none (default: gpt2)"
    )
    p.add_argument(
        "--special",
        action="append",
        metavar="TOKEN",
        help="a special token (repeat for more; default: <|endoftext|>)",
    )
    p.add_argument("--no-special", action="store_true", help="train without special tokens")
    p.add_argument("--out", required=True, metavar="DIR", help="where tokenizer.json is written")
    p.add_argument("--overwrite", action="store_true", help="replace an existing tokenizer")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print one JSON object of results")
    p.set_defaults(func=cmd_train)


def _add_encode(commands) -> None:
    p = add_command(
        commands,
        "encode",
        "Encode text (from --text or standard input) to token ids.",
        "  llmscratch tokenizer encode --text 'Hello world'            # 15496 995\n"
        "  cat play.txt | llmscratch tokenizer encode --tokenizer runs/tok --json\n"
        "  llmscratch tokenizer encode --text 'a<|endoftext|>' --allowed-special all\n",
    )
    _add_tokenizer_arg(p)
    p.add_argument("--text", help="the text (default: read standard input)")
    p.add_argument(
        "--allowed-special",
        default="none",
        metavar="all|none|TOKEN,...",
        help="special tokens whose text becomes their id (default: none)",
    )
    p.add_argument(
        "--disallowed-special",
        default="all",
        choices=["all", "none"],
        help="all: other special-token text is an error (default); none: encode it as text",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of ids")
    p.set_defaults(func=cmd_encode)


def _add_decode(commands) -> None:
    p = add_command(
        commands,
        "decode",
        "Decode token ids (a JSON list, or numbers separated by spaces) to text.",
        "  echo '[15496, 995]' | llmscratch tokenizer decode --tokenizer gpt2\n"
        "  llmscratch tokenizer decode --ids '15496 995' --json\n",
    )
    _add_tokenizer_arg(p)
    p.add_argument("--ids", help="the ids (default: read standard input)")
    p.add_argument(
        "--errors",
        default="replace",
        choices=["replace", "strict"],
        help="invalid UTF-8: write U+FFFD (default) or fail",
    )
    p.add_argument("--json", action="store_true", help='print {"text": ...}')
    p.set_defaults(func=cmd_decode)


def _add_inspect(commands) -> None:
    p = add_command(
        commands,
        "inspect",
        "Show how text splits into tokens (coloured), with bytes/token and tokens/word.",
        "  llmscratch tokenizer inspect --text 'Wherefore art thou Romeo?'\n"
        "  head -c 2000 play.txt | llmscratch tokenizer inspect --tokenizer runs/tok\n"
        "  llmscratch tokenizer inspect --tokenizer runs/tok --text 'x' --json\n",
    )
    _add_tokenizer_arg(p)
    p.add_argument("--text", help="the text (default: read standard input)")
    p.add_argument(
        "--color",
        default="auto",
        choices=["auto", "always", "never"],
        help="colour each token (auto: when printing to a terminal); without colour, "
        "tokens are separated by |",
    )
    p.add_argument("--json", action="store_true", help="print the tokens and figures as JSON")
    p.set_defaults(func=cmd_inspect)


def _add_convert(commands) -> None:
    p = add_command(
        commands,
        "convert",
        "Convert a tokenizer between formats: ours, Hugging Face tokenizer.json, .tiktoken.",
        "  llmscratch tokenizer convert --tokenizer runs/tok --to hf --out runs/tok-hf\n"
        "  llmscratch tokenizer convert --tokenizer gpt2 --to tiktoken --out gpt2.tiktoken\n"
        "  llmscratch tokenizer convert --tokenizer llama/tokenizer.json --to llmscratch "
        "--out runs/llama-tok\n",
    )
    _add_tokenizer_arg(p)
    p.add_argument(
        "--to",
        required=True,
        choices=["llmscratch", "hf", "tiktoken"],
        help="llmscratch: DIR/tokenizer.json; hf: DIR/tokenizer.json for Hugging Face; "
        "tiktoken: a .tiktoken rank file",
    )
    p.add_argument("--out", required=True, help="output directory (or .tiktoken file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true", help="print one JSON object of results")
    p.set_defaults(func=cmd_convert)


# ------------------------------------------------------------------ commands


def cmd_train(args: argparse.Namespace) -> int:
    resolve_pattern(args.pattern)  # fail on a bad name before reading anything
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LLMScratchError(f"--out {out} is a file; give a directory for tokenizer.json")
    if (out / "tokenizer.json").exists() and not args.overwrite:
        raise LLMScratchError(
            f"{out / 'tokenizer.json'} already exists; pass --overwrite to replace it "
            "or choose another --out"
        )
    if args.no_special and args.special:
        raise LLMScratchError("--no-special conflicts with --special; give one of them")
    specials = [] if args.no_special else (args.special or ["<|endoftext|>"])
    if args.data:
        paths = check_files(expand_paths(args.data))
        texts = iter_files(paths, whole=args.pattern == "none")
        source = f"{len(paths)} file(s)"
    else:
        texts = [shakespeare_text()]
        source = "the embedded Shakespeare corpus"
    show_progress = not (args.quiet or args.json)
    tokenizer = train_bpe(texts, args.vocab_size, args.pattern, specials, progress=show_progress)
    path = tokenizer.save(out)
    stats = dict(tokenizer.train_stats)
    stats["bytes_per_token"] = stats["bytes"] / max(stats["tokens"], 1)
    if args.json:
        summary = {"out": str(path), "vocab_size": tokenizer.vocab_size, "pattern": args.pattern}
        summary.update(special_tokens=tokenizer.special_tokens, **stats)
        print(json.dumps(summary))
        return 0
    if tokenizer.vocab_size < args.vocab_size:
        print(
            f"note: the text only supports {tokenizer.vocab_size} tokens "
            f"(every word is already one token); asked for {args.vocab_size}",
            file=sys.stderr,
        )
    print(
        f"trained a {tokenizer.vocab_size}-token BPE tokenizer ({args.pattern} pattern) on "
        f"{source}: {stats['bytes'] / 1e6:.2f} MB, {stats['distinct_words']:,} distinct words\n"
        f"training time: {stats['seconds']:.2f} s (counting {stats['count_seconds']:.2f} s, "
        f"merging {stats['merge_seconds']:.2f} s)\n"
        f"compression on the training text: {stats['bytes_per_token']:.2f} bytes/token\n"
        f"saved {path}"
    )
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    tokenizer = open_tokenizer(args.tokenizer, args.pattern)
    text = _input_text(args.text)
    allowed = args.allowed_special
    if allowed not in ("all", "none"):
        allowed = {token for token in allowed.split(",") if token}
    ids = tokenizer.encode(
        text, allowed_special=allowed, disallowed_special=args.disallowed_special
    )
    print(json.dumps(ids) if args.json else " ".join(map(str, ids)))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    tokenizer = open_tokenizer(args.tokenizer, args.pattern)
    ids = _parse_ids(args.ids if args.ids is not None else sys.stdin.read())
    text = tokenizer.decode(ids, errors=args.errors)
    if args.json:
        print(json.dumps({"text": text}, ensure_ascii=False))
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    tokenizer = open_tokenizer(args.tokenizer, args.pattern)
    text = _input_text(args.text)
    report = inspect_text(tokenizer, text)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
        return 0
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    print(render_tokens(report["tokens"], color))
    print(
        f"{report['n_tokens']:,} tokens, {report['n_bytes']:,} bytes, {report['n_words']:,} "
        f"words: {report['bytes_per_token']:.2f} bytes/token, "
        f"{report['tokens_per_word']:.2f} tokens/word"
    )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    tokenizer = open_tokenizer(args.tokenizer, args.pattern)
    out = Path(args.out)
    target = out if args.to == "tiktoken" else out / "tokenizer.json"
    if target.exists() and not args.overwrite:
        raise LLMScratchError(f"{target} already exists; pass --overwrite to replace it")
    if args.to == "llmscratch":
        path = tokenizer.save(out)
    elif args.to == "hf":
        path = save_hf_tokenizer(tokenizer.parts, out)
    else:
        path = save_tiktoken_file(tokenizer.parts, out)
    if args.json:
        print(json.dumps({"out": str(path), "format": args.to, "vocab_size": tokenizer.vocab_size}))
    else:
        print(f"wrote {path} ({args.to} format, {tokenizer.vocab_size} ids)")
    return 0


# ------------------------------------------------------------------ helpers


def _input_text(text: str | None) -> str:
    if text is None:
        if sys.stdin.isatty():
            raise LLMScratchError("no input text: give --text TEXT or pipe text on standard input")
        try:
            text = sys.stdin.read()
        except UnicodeDecodeError:
            raise LLMScratchError("standard input is not UTF-8 text; convert it first") from None
    if not text:
        raise LLMScratchError("the input text is empty; give --text TEXT or pipe some text in")
    return text


def _parse_ids(raw: str) -> list[int]:
    raw = raw.strip()
    if not raw:
        raise LLMScratchError("no token ids given: pipe a JSON list like [15496, 995] or use --ids")
    try:
        ids = (parse_json(raw, "the ids") if raw.startswith("[")
               else [int(word) for word in raw.split()])
    except (LLMScratchError, ValueError) as err:
        reason = f" ({err})" if isinstance(err, LLMScratchError) else ""
        raise LLMScratchError(
            f"cannot read token ids from {raw[:40]!r}{reason}; give a JSON list like "
            "[15496, 995] or numbers separated by spaces"
        ) from None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                            for i in ids):
        raise LLMScratchError(f"token ids must be a list of integers, got {raw[:40]!r}")
    return ids
