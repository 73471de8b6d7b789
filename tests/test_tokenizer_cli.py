"""`llmscratch tokenizer ...` end to end, through the real entry point `llmscratch.cli.main`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmscratch.tokenizer import Tokenizer

TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
) * 40


def run(capsys, *argv: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    from llmscratch.cli import main

    if stdin is not None:
        import io

        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture()
def trained(tmp_path, corpus, capsys):
    out = tmp_path / "tok"
    code, stdout, _ = run(
        capsys, "tokenizer", "train", "--data", str(corpus), "--vocab-size", "300",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0
    return out, json.loads(stdout)


def test_train_writes_a_loadable_tokenizer(trained):
    out, summary = trained
    assert summary["vocab_size"] == 300
    assert isinstance(summary["seconds"], float) and summary["bytes_per_token"] > 1.5
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 300 and tok.eot_id == 299


def test_train_plain_output_reports_time(tmp_path, corpus, capsys):
    code, out, _ = run(
        capsys, "tokenizer", "train", "--data", str(corpus), "--vocab-size", "280",
        "--pattern", "gpt4", "--quiet", "--out", str(tmp_path / "t"),
    )  # fmt: skip
    assert code == 0
    assert "training time:" in out and "bytes/token" in out


def test_train_progress_in_a_log_is_plain_lines(tmp_path, corpus, capsys):
    code, _, err = run(capsys, "tokenizer", "train", "--data", str(corpus), "--vocab-size",
                       "280", "--out", str(tmp_path / "t"))
    assert code == 0 and "\r" not in err  # no terminal: no tqdm redraws
    assert err.splitlines()[-1].startswith("BPE merges: 23/23 merge (100%)")


def test_encode_decode_round_trip(trained, capsys, monkeypatch):
    out, _ = trained
    code, ids_json, _ = run(capsys, "tokenizer", "encode", "--tokenizer", str(out),
                            "--json", stdin=TEXT[:200], monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0
    ids = json.loads(ids_json)
    assert ids == Tokenizer.load(out).encode(TEXT[:200])
    code, text, _ = run(capsys, "tokenizer", "decode", "--tokenizer", str(out), "--json",
                        stdin=ids_json, monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0 and json.loads(text)["text"] == TEXT[:200]


def test_gpt2_is_built_in(capsys):
    code, out, _ = run(capsys, "tokenizer", "encode", "--tokenizer", "gpt2", "--text",
                       "Hello world", "--json")  # fmt: skip
    assert code == 0 and json.loads(out) == [15496, 995]
    code, out, _ = run(capsys, "tokenizer", "decode", "--ids", "15496 995")
    assert code == 0 and out == "Hello world\n"


def test_special_tokens_on_the_command_line(capsys):
    text = "a<|endoftext|>b"
    code, _, err = run(capsys, "tokenizer", "encode", "--text", text)
    assert code == 2 and "special token" in err
    code, out, _ = run(capsys, "tokenizer", "encode", "--text", text, "--allowed-special", "all")
    assert out.split() == ["64", "50256", "65"]
    code, out, _ = run(
        capsys, "tokenizer", "encode", "--text", text, "--disallowed-special", "none"
    )
    assert "50256" not in out.split()


def test_inspect_shows_tokens_and_figures(capsys):
    code, out, _ = run(capsys, "tokenizer", "inspect", "--text", "Hello world 中", "--json")
    report = json.loads(out)
    assert code == 0
    assert [t["id"] for t in report["tokens"]][:2] == [15496, 995]
    assert report["n_bytes"] == 15 and report["bytes_per_token"] == 15 / report["n_tokens"]
    code, out, _ = run(capsys, "tokenizer", "inspect", "--text", "Hello world", "--color", "never")
    assert out.splitlines()[0] == "Hello|·world"
    code, out, _ = run(capsys, "tokenizer", "inspect", "--text", "Hello", "--color", "always")
    assert "\x1b[" in out


def test_convert_to_tiktoken_and_back(tmp_path, trained, capsys):
    out, _ = trained
    target = tmp_path / "mine.tiktoken"
    code, _, _ = run(capsys, "tokenizer", "convert", "--tokenizer", str(out), "--to",
                     "tiktoken", "--out", str(target))  # fmt: skip
    assert code == 0
    code, ids, _ = run(capsys, "tokenizer", "encode", "--tokenizer", str(target), "--text", TEXT)
    assert code == 0
    assert [int(i) for i in ids.split()] == Tokenizer.load(out).encode(TEXT)
    code, _, err = run(capsys, "tokenizer", "convert", "--tokenizer", str(out), "--to",
                       "tiktoken", "--out", str(target))  # fmt: skip
    assert code == 2 and "already exists" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--vocab-size", "100"], "too small"),
        (["train", "--vocab-size", "257", "--special", "<a>", "--special", "<b>"], "too small"),
        (["train", "--pattern", "gpt5"], "unknown pre-tokenizer pattern"),
        (["train", "--special", "<a>", "--special", "<a>"], "listed twice"),
        (["train", "--special", "<a>", "--no-special"], "conflicts"),
        (["train", "--data", "{missing}"], "not found"),
        (["train", "--data", "{empty}"], "is empty"),
        (["train", "--data", "{binary}"], "not UTF-8"),
        (["encode", "--text", ""], "empty"),
        (
            ["encode", "--text", "x<|im_start|>", "--allowed-special", "<|im_start|>"],
            "unknown special token",
        ),
        (["encode", "--tokenizer", "{corrupt}", "--text", "x"], "corrupt"),
        (["encode", "--tokenizer", "{missing}", "--text", "x"], "does not exist"),
        (["decode", "--ids", "1 x"], "cannot read token ids"),
        (["decode", "--ids", "[1, 1e9]"], "list of integers"),
        (["decode", "--ids", "99999999"], "not in this tokenizer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "binary.txt").write_bytes(b"ok \xff\xfe\x00 text")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "tokenizer.json").write_text("{ nope", encoding="utf-8")
    names = {
        "{missing}": str(tmp_path / "missing.txt"),
        "{empty}": str(tmp_path / "empty.txt"),
        "{binary}": str(tmp_path / "binary.txt"),
        "{corrupt}": str(tmp_path / "corrupt"),
    }
    argv = [names.get(arg, arg) for arg in argv]
    if argv[0] == "train":
        argv += ["--out", str(tmp_path / "out"), "--quiet"]
    code, out, err = run(capsys, "tokenizer", *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_train_refuses_to_overwrite(trained, corpus, capsys):
    out, _ = trained
    before = (out / "tokenizer.json").read_bytes()
    code, _, err = run(capsys, "tokenizer", "train", "--data", str(corpus), "--vocab-size",
                       "290", "--out", str(out), "--quiet")  # fmt: skip
    assert code == 2 and "already exists" in err
    assert (out / "tokenizer.json").read_bytes() == before


def test_every_command_has_help_with_examples(capsys):
    from llmscratch.cli import main

    for command in ([], ["train"], ["encode"], ["decode"], ["inspect"], ["convert"]):
        assert main(["tokenizer", *command, "--help"]) == 0
        assert "examples:" in capsys.readouterr().out


def test_tokenizer_commands_do_not_import_torch():
    code = (
        "import argparse, sys\n"
        "from llmscratch.cli.tokenizer import register\n"
        "parser = argparse.ArgumentParser()\n"
        "register(parser.add_subparsers())\n"
        "args = parser.parse_args(['tokenizer', 'encode', '--text', 'hi'])\n"
        "assert args.func(args) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["5303"]
