"""The command line, end to end: pretrain -> eval -> generate, and every bad input."""

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llmscratch import __version__
from llmscratch.cli import build_parser, main
from llmscratch.errors import LLMScratchError
from tests.conftest import TINY_CONFIG, new_run


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed entry point in a real process, to see exit codes and stderr."""
    return subprocess.run([sys.executable, "-m", "llmscratch", *args], capture_output=True,
                          text=True, timeout=300)


def test_pretrain_leaves_a_complete_run(tiny_run):
    for name in ("config.yaml", "tokenizer/tokenizer.json", "metrics.jsonl", "loss.png",
                 "samples.md", "report.md", "checkpoints/latest"):
        assert (tiny_run / name).is_file(), name
    ckpt = tiny_run / "checkpoints" / (tiny_run / "checkpoints" / "latest").read_text().strip()
    assert ckpt.name == "step-00000020"
    assert {"model.safetensors", "optimizer.pt", "state.json"} <= {p.name for p in ckpt.iterdir()}
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config["train"]["max_steps"] == 20 and config["model"]["n_embd"] == 32
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]  # it learned something
    assert any("final_val_bpb" in r for r in records)
    report = (tiny_run / "report.md").read_text()
    assert "validation bits per byte" in report
    # train.dtype was auto: the report and config.yaml name what it became
    assert config["train"]["dtype"] in ("bf16", "fp32")
    assert f"| steps, optimizer, precision | 20, adamw, {config['train']['dtype']} |" in report


def test_eval_json(tiny_run, small_text):
    out = run_cli("eval", "--run", str(tiny_run), "--data", str(small_text), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["bytes"] == len(small_text.read_bytes())
    assert result["perplexity"] == pytest.approx(2.718281828 ** result["loss"], rel=1e-6)
    assert result["bpb"] == pytest.approx(
        result["loss"] * result["tokens"] / 0.6931471805599453 / result["bytes"], rel=1e-6)


def test_generate_is_deterministic_per_seed(tiny_run, capsys):
    def generate(seed: int) -> dict:
        assert main(["generate", "--run", str(tiny_run), "--prompt", "ROMEO:", "--seed",
                     str(seed), "--max-new-tokens", "25", "--temperature", "1.0", "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    first = generate(1)
    assert len(first["token_ids"]) <= 25 and isinstance(first["text"], str)
    assert generate(1) == first
    assert generate(2)["token_ids"] != first["token_ids"]


def test_speculative_generate_writes_the_plain_greedy_text_and_reports_acceptance(
        tiny_run, capsys):
    def generate(*extra: str) -> dict:
        assert main(["generate", "--run", str(tiny_run), "--prompt", "ROMEO: ROMEO: ROMEO:",
                     "--max-new-tokens", "30", "--temperature", "0", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    plain = generate()
    assert "speculative" not in plain
    lookup = generate("--speculative", "prompt-lookup", "--draft-tokens", "3")
    assert lookup["token_ids"] == plain["token_ids"]
    assert lookup["speculative"]["drafted"] > 0
    itself = generate("--speculative", str(tiny_run))  # a draft that always agrees
    assert itself["token_ids"] == plain["token_ids"]
    assert itself["speculative"]["acceptance_rate"] == 1.0
    assert main(["generate", "--run", str(tiny_run), "--prompt", "ROMEO:", "--max-new-tokens",
                 "5", "--speculative", "prompt-lookup"]) == 0
    assert "draft tokens accepted" in capsys.readouterr().err


def test_chat_speculates_to_the_same_replies_and_refuses_a_model_that_cannot_rewind(
        tiny_run, capsys, monkeypatch):
    import io

    from llmscratch.model import GPT, get_preset
    from llmscratch.runs import load

    def chat(*extra: str) -> str:
        monkeypatch.setattr("sys.stdin", io.StringIO("ROMEO: ROMEO: ROMEO:\nHAMLET:\n"))
        assert main(["chat", "--run", str(tiny_run), "--max-new-tokens", "12",
                     "--temperature", "0", *extra]) == 0
        return capsys.readouterr().out

    replies = chat()
    assert "model> " in replies
    assert chat("--speculative", "prompt-lookup", "--draft-tokens", "3") == replies
    assert chat("--speculative", str(tiny_run)) == replies  # a draft model that always agrees
    real = load.load_for_inference

    def with_deltanet(*args, **kwargs):  # the run's tokenizer, a Qwen3-Next model
        _, tokenizer, settings = real(*args, **kwargs)
        return GPT(get_preset("qwen3-next-tiny")), tokenizer, settings

    monkeypatch.setattr(load, "load_for_inference", with_deltanet)  # chat's
    monkeypatch.setattr("llmscratch.serving.app.load_for_inference", with_deltanet)  # serve's
    for argv in (["chat"], ["serve", "--port", "0"]):
        assert main([*argv, "--run", str(tiny_run), "--speculative", "prompt-lookup"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --speculative: the model has Gated DeltaNet layers")
        assert "\n" not in err


def test_a_draft_model_with_another_tokenizer_is_refused_in_one_line(tiny_run, tmp_path, capsys):
    other = new_run(tmp_path / "other")  # another tokenizer (and no checkpoint: never read)
    assert main(["generate", "--run", str(tiny_run), "--prompt", "x", "--speculative",
                 str(other.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --speculative") and "tokenizer differs" in err
    assert "\n" not in err


def test_version_and_help():
    assert run_cli("--version").stdout.strip() == f"llmscratch {__version__}"
    for command in ("demo", "pretrain", "generate", "eval", "tokenizer"):
        out = run_cli(command, "--help")
        assert out.returncode == 0 and "example" in out.stdout.lower(), command


@pytest.mark.parametrize("seconds, user, shape", [
    (0.2, [], (4, 256)),                     # 2,725 steps fit in 545 s: configs/demo.yaml
    (0.4, [], (2, 192)),                     # 1,362 fit: fewer than 2,500, the smaller preset
    (0.22, [], (2, 192)),                    # 2,477 fit: still fewer than 2,500
    (0.4, ["model.n_layer=5"], (5, 192)),    # the user's own override still wins
])
def test_demo_sizes_its_model_to_the_steps_that_fit(monkeypatch, tmp_path, seconds, user, shape):
    import llmscratch.recipes.demo as demo

    chosen, timed = {}, []

    def fake_timing(model_config, train, device):
        timed.append((model_config.n_layer, model_config.n_embd))
        return seconds

    def fake_pretrain(config, out_dir, overwrite):  # stop before any training
        chosen["model"] = config.model
        raise LLMScratchError("stopped by the test")

    monkeypatch.setattr(demo, "seconds_per_step", fake_timing)
    monkeypatch.setattr(demo, "pretrain", fake_pretrain)
    assert main(["demo", "--out", str(tmp_path / "demo"), *user]) == 2
    assert timed[0][1] == 256  # it timed configs/demo.yaml's own model
    assert (chosen["model"].n_layer, chosen["model"].n_embd) == shape
    assert chosen["model"].vocab_size == 2048  # the rest of configs/demo.yaml stays


def test_seconds_per_step_times_real_steps_after_the_warm_up(monkeypatch):
    """On a clock that each step moves by a chosen time: the warm-up steps are not counted,
    the result is the median of the timed ones, and each step is a real training step of
    the configured batch (no test reads the wall clock)."""
    import torch

    import llmscratch.training.throughput as throughput
    from llmscratch.model import GPT
    from llmscratch.model.presets import get_preset
    from llmscratch.runs.config import TrainConfig

    durations = iter([9.0, 9.0, 9.0, 0.5, 0.25, 0.75])  # 3 slow warm-up steps, then 3 timed
    clock, batches = [0.0], []
    loss = GPT.next_token_loss

    def timed_loss(self, logits, targets):  # each step's loss moves the clock by its time
        batches.append(tuple(targets.shape))
        clock[0] += next(durations)
        return loss(self, logits, targets)

    class Clock:
        @staticmethod
        def perf_counter() -> float:
            return clock[0]

    monkeypatch.setattr(GPT, "next_token_loss", timed_loss)
    monkeypatch.setattr(throughput, "time", Clock)
    model = get_preset("gpt2-tiny")
    train = TrainConfig(batch_size=3, seq_len=16, dtype="fp32")
    seconds = throughput.seconds_per_step(model, train, torch.device("cpu"), steps=3, warmup=3)
    assert seconds == 0.5  # the median of 0.5, 0.25 and 0.75; the 9 s warm-up steps left out
    assert batches == [(3, 16)] * 6


def test_progress_without_a_terminal_is_a_few_plain_lines():
    """In a log or CI (no terminal): whole lines, a bounded number, no carriage returns."""
    import io

    from llmscratch.progress import PlainProgress, progress

    now, log = [0.0], io.StringIO()
    bar = PlainProgress(4000, "demo", "step", stream=log, clock=lambda: now[0])
    bar.set_postfix(loss="4.112")
    for _ in range(4000):  # 0.15 s a step: 5% (200 steps) every 30 s
        now[0] += 0.15
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 20  # one each 5%
    assert lines[0] == "demo: 200/4,000 step (5%), 30 s, 6.7 step/s, loss=4.112"
    assert lines[-1] == "demo: 4,000/4,000 step (100%), 600 s, 6.7 step/s, loss=4.112"

    log = io.StringIO()  # fast updates, no total: a line each 30 s, and the last
    bar = PlainProgress(None, "words", "char", unit_scale=True, stream=log, clock=lambda: now[0])
    for _ in range(400):
        now[0] += 0.25
        bar.update(1000)
    bar.close()
    assert log.getvalue().splitlines() == ["words: 120kchar, 30 s, 4.00kchar/s",
                                           "words: 240kchar, 60 s, 4.00kchar/s",
                                           "words: 360kchar, 90 s, 4.00kchar/s",
                                           "words: 400kchar, 100 s, 4.00kchar/s"]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress(10, stream=io.StringIO()), PlainProgress)
    assert not isinstance(progress(10, stream=Terminal()), PlainProgress)  # tqdm's live bar


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "not_a_run").mkdir()
    return tmp_path


BAD_INPUTS = [
    (["eval", "--run", "{run}", "--data", "{tmp}/missing.txt"], "data file not found"),
    (["eval", "--run", "{run}", "--data", "{tmp}/empty.txt"], "is empty"),
    (["eval", "--run", "{run}", "--data", "{tmp}/latin1.txt"], "is not UTF-8"),
    (["eval", "--run", "{tmp}/not_a_run", "--data", "{text}"], "is not a run directory"),
    (["generate", "--run", "{run}", "--prompt", ""], "prompt is empty"),
    (["generate", "--run", "{run}", "--prompt", "word " * 200], "context length is 64"),
    (["generate", "--run", "{run}", "--prompt", "x", "--speculative", "prompt-lookup",
      "--draft-tokens", "0"], "--draft-tokens must be at least 1"),
    (["generate", "--run", "{run}", "--prompt", "x", "--speculative", "{tmp}/not_a_run"],
     "is not a run directory"),
    (["chat", "--run", "{run}", "--speculative", "prompt-lookup", "--draft-tokens", "-2"],
     "--draft-tokens must be at least 1"),
    (["serve", "--run", "{run}", "--speculative", "prompt-lookup", "--draft-tokens", "0"],
     "--draft-tokens must be at least 1"),
    (["chat", "--run", "{run}", "--speculative", "{tmp}/not_a_run"], "is not a run directory"),
    (["serve", "--run", "{run}", "--port", "0", "--speculative", "{tmp}/not_a_run"],
     "is not a run directory"),
    (["pretrain", "--config", TINY_CONFIG, "--out", "{tmp}/o", "train.max_step=2"],
     "did you mean 'train.max_steps'"),
    (["pretrain", "--config", TINY_CONFIG, "--out", "{tmp}/o", "model.preset=gpt7"],
     "unknown model preset"),
    (["pretrain", "--config", TINY_CONFIG, "--out", "{tmp}/o", "train.batch_size=big"],
     "train.batch_size must be of type int"),
    (["pretrain", "--config", TINY_CONFIG, "--data", "{text}", "--out", "{tmp}/o",
      "train.seq_len=128"], "longer than model.context_length=64"),
    (["pretrain", "--config", TINY_CONFIG, "--data", "{tmp}/missing.txt", "--out", "{tmp}/o"],
     "data file not found"),
    (["pretrain", "--config", TINY_CONFIG, "--data", "{text}", "--out", "{run}"],
     "already exists"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS, ids=[m for _, m in BAD_INPUTS])
def test_bad_input_gives_one_line_and_exit_2(argv, message, tiny_run, small_text, bad_files,
                                             capsys):
    argv = [a.format(run=tiny_run, tmp=bad_files, text=small_text) for a in argv]
    before = sorted(p.name for p in tiny_run.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert sorted(p.name for p in tiny_run.rglob("*")) == before  # nothing overwritten


def test_corrupt_tokenizer_is_reported(tiny_run, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    (broken / "tokenizer" / "tokenizer.json").write_text("{not json")
    assert main(["generate", "--run", str(broken), "--prompt", "hi"]) == 2
    assert "tokenizer" in capsys.readouterr().err


def test_error_exit_has_no_traceback(tmp_path):
    out = run_cli("eval", "--run", str(tmp_path), "--data", "x.txt")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stderr.startswith("error: ")


def test_tokenizer_commands_do_not_load_torch():
    code = ("import sys; from llmscratch.cli import main; "
            "rc = main(['tokenizer', 'encode', '--tokenizer', 'gpt2', '--text', 'hi', '--json']); "
            "assert rc == 0 and 'torch' not in sys.modules, sorted(sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [5303]


def test_generate_and_eval_take_a_device_and_a_dtype(tiny_run, small_text, capsys):
    scores = {}
    for dtype in ("fp32", "bf16"):
        assert main(["eval", "--run", str(tiny_run), "--data", str(small_text), "--json",
                     "--device", "cpu", "--dtype", dtype]) == 0
        scores[dtype] = json.loads(capsys.readouterr().out)["loss"]
    assert scores["bf16"] == pytest.approx(scores["fp32"], rel=1e-2)  # bf16 weights: close
    assert main(["generate", "--run", str(tiny_run), "--prompt", "To be", "--dtype", "bf16",
                 "--max-new-tokens", "5", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["token_ids"]) <= 5
    import torch

    if not torch.cuda.is_available():
        assert main(["eval", "--run", str(tiny_run), "--data", str(small_text),
                     "--device", "cuda"]) == 2
        assert "no CUDA GPU is visible" in capsys.readouterr().err


# --- the commands that messages name ---------------------------------------------------------

SOURCE = Path(__file__).resolve().parents[1] / "src" / "llmscratch"
SPEAKERS = {"LLMScratchError", "print", "say", "warn", "write"}  # calls whose text users read


def spoken_texts():
    """(file, text) of every string a message is made of, placeholders as VALUE."""
    for path in sorted(SOURCE.rglob("*.py")):
        for call in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = getattr(call, "func", None)
            name = getattr(name, "id", None) or getattr(name, "attr", None)
            if not isinstance(call, ast.Call) or name not in SPEAKERS:
                continue
            for node in (n for arg in call.args for n in ast.walk(arg)):
                if isinstance(node, ast.JoinedStr):
                    yield path.name, "".join(v.value if isinstance(v, ast.Constant)
                                             else "VALUE" for v in node.values)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    yield path.name, node.value


def test_every_command_a_message_names_exists():
    """A quoted command in a message (`llmscratch finetune resume RUN --fallback`) names
    a command and options that the parser has; a quoted option says which command it is
    of (`--resume RUN --fallback` alone could be any, and was none)."""
    parser = build_parser()
    hints = [(name, hint) for name, text in spoken_texts()
             for hint in re.findall(r"`([^`]*)`", text)
             if hint.startswith(("llmscratch ", "-"))]
    assert len(hints) > 20  # the walk finds them
    for name, hint in hints:
        words = hint.split()
        assert words[0] == "llmscratch", f"{name}: `{hint}` does not say which command"
        command, words = parser, words[1:]
        while words and words[0] in _subcommands(command):
            command = _subcommands(command)[words.pop(0)]
        assert command is not parser, f"{name}: `{hint}` names no command"
        for option in (w.split("=")[0] for w in words if w.startswith("--")):
            assert option in command._option_string_actions, \
                f"{name}: `{hint}`: {command.prog} has no {option}"


def _subcommands(parser) -> dict:
    return next((a.choices for a in parser._actions
                 if isinstance(a, argparse._SubParsersAction)), {})


def test_quantize_works_in_generate_chat_serve_and_eval(tiny_run, small_text, capsys,
                                                          monkeypatch):
    """--quantize int8|int4 reaches the model of every inference command: generate's greedy
    ids and eval's loss are those of the run's model quantized in this process."""
    import io

    from llmscratch.evaluation.perplexity import evaluate_text
    from llmscratch.generation.quantize import Int4Linear, Int8Linear, quantize_linear_weights
    from llmscratch.generation.sampling import SamplingConfig, generate_tokens
    from llmscratch.runs.load import load_for_inference
    from llmscratch.serving.app import serve_run

    def quantized(mode):
        model, tokenizer, settings = load_for_inference(tiny_run, "cpu")
        quantize_linear_weights(model, mode)
        return model, tokenizer, settings

    model, tokenizer, settings = quantized("int8")
    expected = list(generate_tokens(model, tokenizer.encode("To be"),
                                    SamplingConfig(8, temperature=0), settings.stop_token_ids,
                                    tokenizer.vocab_size))
    assert main(["generate", "--run", str(tiny_run), "--prompt", "To be", "--temperature", "0",
                 "--max-new-tokens", "8", "--quantize", "int8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == expected
    text = small_text.read_text()[:3000]
    data = tiny_run.parent / "eval.txt"
    data.write_text(text)
    for mode in ("int8", "int4"):
        model, tokenizer, _ = quantized(mode)
        assert main(["eval", "--run", str(tiny_run), "--data", str(data), "--json",
                     "--quantize", mode]) == 0
        loss = json.loads(capsys.readouterr().out)["loss"]
        assert loss == pytest.approx(evaluate_text(model, tokenizer, text).loss, rel=1e-6)
    calls = []
    monkeypatch.setattr("llmscratch.generation.quantize.quantize_linear_weights",
                        lambda model, mode: calls.append(mode))
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    assert main(["chat", "--run", str(tiny_run), "--max-new-tokens", "2",
                 "--quantize", "int4"]) == 0
    assert calls == ["int4"]
    state, _ = serve_run(str(tiny_run), device="cpu", quantize="int4")
    try:
        layers = list(state.engine._engine.model.modules())
        assert any(isinstance(m, Int4Linear) for m in layers)
        assert any(isinstance(m, Int8Linear) for m in layers)  # the output layer
    finally:
        state.engine.stop()


def test_a_bad_quantize_value_or_device_is_one_line(tiny_run, small_text):
    out = run_cli("generate", "--run", str(tiny_run), "--prompt", "x", "--quantize", "int3")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "invalid choice: 'int3'" in out.stderr and out.stderr.startswith("error:")
    out = run_cli("eval", "--run", str(tiny_run), "--data", str(small_text), "--quantize",
                  "int8", "--device", "cuda")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
