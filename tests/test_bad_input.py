"""Bad input and faults, tried as a new user would: one line starting with `error:`, exit
status 2, and not one byte changed anywhere under the test's folder.

The battery covers each class of mistake: data that would be damaged (a folder that is
not a run, a resume that fails half-way, an export over a file), values that mean
nothing (nan, inf, negative counts, a text too short to score), malformed files and
overrides, output paths that name files, and faults of the machine (a full disk, a
read-only folder, two processes on one run). Crafted checkpoints must never run code.
"""

import errno
import hashlib
import json
import multiprocessing
import os
import pickle
import resource
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from llmscratch.cli import main
from llmscratch.config import INT_MAX
from llmscratch.data.examples import Example, ExampleBatches
from llmscratch.data.labeled_files import from_named_labels, split_three_ways
from llmscratch.data.loader import TokenWindows
from llmscratch.errors import LLMScratchError
from llmscratch.io import sha256_file
from llmscratch.model.lora import LoRAConfig, apply_lora, lora_layers
from llmscratch.recipes.eval_tasks import RESULT_FORMAT
from llmscratch.runs import checkpoint as checkpoint_module
from llmscratch.runs.checkpoint import latest_checkpoint
from llmscratch.runs.load import load_model
from llmscratch.runs.metrics import MetricsLog
from llmscratch.runs.peft_adapters import export_peft_adapter
from llmscratch.runs.run import Run
from tests.conftest import TINY_CONFIG
from tests.hf_tiny import VOCAB, hf_model, save_folder


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` (hidden ones too), with its content's hash."""
    return {str(p.relative_to(root)): (sha256_file(p) if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def place(tmp_path, tiny_run, small_text) -> dict[str, Path]:
    """A folder with a run, a folder that is not a run, and files of every kind of wrong."""
    root = tmp_path / "place"
    root.mkdir()
    shutil.copytree(tiny_run, root / "run")
    (root / "notrun").mkdir()
    (root / "notrun" / "notes.txt").write_text("my notes")
    files = {
        "text.txt": small_text.read_text(), "file.txt": "x", "one.txt": "a", "h.txt": "h",
        "tiny.txt": small_text.read_text()[:300], "w.safetensors": "not mine to replace",
        "modelint.yaml": "model: 5\n", "modellist.yaml": "model: [1, 2]\n",
        "badyaml.yaml": "train:\n  lr: [1,\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "latin1.yaml").write_bytes("model:\n  n_layer: \xe9\n".encode("latin-1"))
    return {"root": root, **{p.stem: p for p in root.iterdir()}}


def fails_in_one_line(capsys, argv: list[str], place: dict[str, Path],
                      after_progress: bool = False) -> str:
    """Run the command; check exit 2, one `error:` line, nothing changed; return the line.

    A mistake in the input is found before any work, so stderr holds that line alone;
    a fault met while working (`after_progress`) may follow progress bars, on a line of
    its own at the end.
    """
    before = snapshot(place["root"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    if not after_progress:
        assert len(lines) == 1, err
    assert lines[-1].startswith("error: "), err
    assert sum("error" in line for line in lines) == 1 and "Traceback" not in err, err
    assert snapshot(place["root"]) == before, "a file changed"
    return lines[-1]


CASES = {
    # data that must not be damaged
    "demo over a folder that is not a run": (
        ["demo", "--out", "{notrun}"], "is not a run directory"),
    "--overwrite of a folder that is not a run": (
        ["pretrain", "--config", TINY_CONFIG, "--data", "{text}", "--out", "{notrun}",
         "--overwrite"], "is not a run directory"),
    "--overwrite of a run, with a missing data file": (
        ["pretrain", "--config", TINY_CONFIG, "--data", "{root}/missing.txt", "--out", "{run}",
         "--overwrite"], "data file not found"),
    "resume with another model": (
        ["pretrain", "--resume", "{run}", "model.n_layer=3"], "the model cannot change"),
    "resume with lr nan": (["pretrain", "--resume", "{run}", "train.lr=nan"], "finite"),
    "export over an existing file": (
        ["checkpoint", "export", "{run}", "--out", "{w}"], "already exists"),
    "data prepare --overwrite of a folder that is not prepared data": (
        ["data", "prepare", "--data", "{text}", "--tokenizer", "gpt2", "--out", "{notrun}",
         "--overwrite"], "is not prepared data"),
    "to-hf into a folder that is not a model": (
        ["convert", "to-hf", "{run}", "{notrun}", "--overwrite"], "not a Hugging Face model"),
    # values that mean nothing
    "temperature nan": (["generate", "--run", "{run}", "--prompt", "x", "--temperature", "nan"],
                        "temperature must be a finite number"),
    "temperature inf": (["generate", "--run", "{run}", "--prompt", "x", "--temperature", "inf"],
                        "temperature must be a finite number"),
    "max-new-tokens -1": (["generate", "--run", "{run}", "--prompt", "x",
                           "--max-new-tokens", "-1"], "max_new_tokens must be at least 1"),
    "top-p 0": (["generate", "--run", "{run}", "--prompt", "x", "--top-p", "0"], "top_p"),
    "eval batch size 0": (["eval", "--run", "{run}", "--data", "{text}", "--batch-size", "0"],
                          "--batch-size must be at least 1"),
    "eval batch size -3": (["eval", "--run", "{run}", "--data", "{text}", "--batch-size", "-3"],
                           "--batch-size must be at least 1"),
    "eval of a one-token text": (["eval", "--run", "{run}", "--data", "{h}"],
                                 "at least 2 are needed"),
    "inspect --seq 0": (["inspect", "gpt2", "--seq", "0"], "must be at least 1"),
    "lr nan": (["pretrain", "--config", TINY_CONFIG, "--out", "{root}/new", "train.lr=nan"],
               "train.lr must be a finite number"),
    "log_every 0": (["pretrain", "--config", TINY_CONFIG, "--out", "{root}/new",
                     "train.log_every=0"], "train.log_every must be >= 1"),
    "a one-byte data file": (["pretrain", "--config", TINY_CONFIG, "--data", "{one}",
                              "--out", "{root}/new"], "validation text is 0 token"),
    "a text with no training window": (["pretrain", "--config", TINY_CONFIG, "--data",
                                        "{tiny}", "--out", "{root}/new"], "no window of 65"),
    # files and overrides that are not what they should be
    "config not UTF-8": (["pretrain", "--config", "{latin1}", "--out", "{root}/new"],
                         "is not UTF-8"),
    "model section a number": (["pretrain", "--config", "{modelint}", "--out", "{root}/new"],
                               "'model' must be a mapping"),
    "model section a list": (["pretrain", "--config", "{modellist}", "--out", "{root}/new"],
                             "'model' must be a mapping"),
    "YAML syntax error": (["pretrain", "--config", "{badyaml}", "--out", "{root}/new"],
                          "is not valid YAML"),
    "malformed override value": (["pretrain", "--config", TINY_CONFIG, "--out", "{root}/new",
                                  "train.lr=["], "is not valid YAML"),
    # --out naming a file
    "pretrain --out a file": (["pretrain", "--config", TINY_CONFIG, "--data", "{text}",
                               "--out", "{file}"], "is a file"),
    "tokenizer train --out a file": (["tokenizer", "train", "--data", "{text}", "--out",
                                      "{file}"], "is a file"),
    "data prepare --out a file": (["data", "prepare", "--data", "{text}", "--tokenizer", "gpt2",
                                   "--out", "{file}"], "is a file"),
    "export --out a folder": (["checkpoint", "export", "{run}", "--out", "{notrun}",
                               "--overwrite"], "is a directory"),
    # argparse's own mistakes: one line too
    "a required option missing": (["generate", "--run", "{run}"], "--prompt"),
    "a number that is not one": (["eval", "--run", "{run}", "--data", "{text}",
                                  "--batch-size", "abc"], "invalid int value"),
    "an unknown option": (["pretrain", "--bogus"], "unrecognized arguments"),
    "a group without its command": (["checkpoint"], "checkpoint needs a command"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, place, capsys):
    argv, message = CASES[case]
    argv = [a.format(**place) for a in argv]
    assert message in fails_in_one_line(capsys, argv, place)


def test_a_resume_whose_weights_do_not_fit_an_edited_config(place, capsys):
    """The config says 3 layers, the checkpoint holds 2: caught before anything changes."""
    config = place["run"] / "config.yaml"
    edited = yaml.safe_load(config.read_text())
    edited["model"]["n_embd"] = 64
    config.write_text(yaml.safe_dump(edited))
    line = fails_in_one_line(capsys, ["pretrain", "--resume", str(place["run"])], place)
    assert "model.n_embd=64 does not fit checkpoint" in line
    assert main(["checkpoint", "verify", str(place["run"])]) == 1  # it says so too
    assert "model.n_embd differ" in capsys.readouterr().out


def test_two_processes_on_one_run_get_a_clear_line(place, capsys):
    with Run(place["run"]).lock():  # another process is training it
        line = fails_in_one_line(capsys, ["pretrain", "--resume", str(place["run"]),
                                          "train.max_steps=30"], place)
        assert "is in use by another process" in line
        line = fails_in_one_line(capsys, ["pretrain", "--config", TINY_CONFIG, "--data",
                                          str(place["text"]), "--out", str(place["run"]),
                                          "--overwrite"], place)
        assert "is in use by another process" in line


def _check_unlocked_many_times(path: str, times: int = 300) -> int:
    """How many of `times` checks of the run said it was in use."""
    in_use = 0
    for _ in range(times):
        try:
            Run(path).check_unlocked()
        except LLMScratchError:
            in_use += 1
    return in_use


def test_processes_that_check_a_run_at_once_do_not_see_it_in_use(place):
    """Every rank of a torchrun job checks its --out before replacing it. Checks at the same
    moment must not read as training: a check that took the run's lock and wrote its pid
    made another one fail with "in use by another process (pid )"."""
    (place["run"] / Run.LOCK).touch()  # the lock file of an earlier run, held by no one
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map(_check_unlocked_many_times, [str(place["run"])] * 2) == [0, 0]


def test_a_full_disk_while_saving_leaves_the_last_checkpoint(place, capsys, monkeypatch):
    def disk_full(tensors, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint_module, "save_file", disk_full)
    run = Run(place["run"])
    assert main(["pretrain", "--resume", str(run.path), "train.max_steps=30",
                 "train.checkpoint_every=5"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("error: cannot write checkpoint step-00000025")
    assert "No space left on device" in last
    assert "the previous checkpoint, step-00000020, is intact" in last
    assert latest_checkpoint(run).name == "step-00000020"  # verified intact
    assert not list(run.checkpoints_dir.glob(".*tmp"))  # no half-written folder left


def test_a_failed_write_of_the_optimizer_state_is_one_line(place, capsys):
    """torch.save reports a failed write as a RuntimeError that names no cause; the
    OSError underneath is what the user sees. A real failure: the process may not write
    a file larger than the weights, so model.safetensors fits and optimizer.pt does not."""
    run = Run(place["run"])
    checkpoint = latest_checkpoint(run)
    weights, optimizer = ((checkpoint / name).stat().st_size
                          for name in ("model.safetensors", "optimizer.pt"))
    assert optimizer > weights + 1000
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a signal
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (weights + 1000, old_limit[1]))
    try:
        code = main(["pretrain", "--resume", str(run.path), "train.max_steps=30",
                     "train.checkpoint_every=5"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: cannot write checkpoint step-00000025") and \
        "File too large" in last and "step-00000020, is intact" in last
    assert latest_checkpoint(run).name == "step-00000020"  # verified intact
    assert not list(run.checkpoints_dir.glob(".*tmp"))


@pytest.mark.parametrize("argv", [
    ["pretrain", "--config", TINY_CONFIG, "--data", "{text}", "--out", "{ro}/run"],
    ["tokenizer", "train", "--data", "{text}", "--out", "{ro}/tok"],
    ["data", "prepare", "--data", "{text}", "--tokenizer", "gpt2", "--out", "{ro}/data"],
    ["convert", "to-hf", "{run}", "{ro}/hf"],
    ["checkpoint", "export", "{run}", "--out", "{ro}/w.safetensors"],
], ids=["pretrain", "tokenizer train", "data prepare", "to-hf", "export"])
def test_a_read_only_folder_is_one_line(argv, place, capsys, monkeypatch):
    """Writes into {ro} fail as on a read-only filesystem (this test may run as root, whom
    file permissions do not stop, so the refusal is made where files are created)."""
    read_only = place["root"] / "ro"
    read_only.mkdir()
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(str(read_only)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "open", refuse(real_open))
    monkeypatch.setattr(os, "mkdir", refuse(real_mkdir))
    argv = [a.format(ro=read_only, **place) for a in argv]
    line = fails_in_one_line(capsys, argv, place, after_progress=True)
    assert "Read-only file system" in line


# --- checkpoint verify: a verdict for everything that is not as written -----------------


def test_verify_finds_an_added_file_a_missing_checkpoint_and_an_edited_config(place, capsys):
    run = Run(place["run"])
    assert main(["checkpoint", "verify", str(run.path)]) == 0
    assert capsys.readouterr().out.count("ok ") == 2
    newest = latest_checkpoint(run)
    (newest / "extra.bin").write_bytes(b"added later")
    assert main(["checkpoint", "verify", str(run.path)]) == 1
    assert "extra.bin, which its manifest does not list" in capsys.readouterr().out
    (newest / "extra.bin").unlink()
    run.latest_path.write_text("step-00000099\n")
    assert main(["checkpoint", "verify", str(run.path)]) == 1
    assert "names step-00000099, which does not exist" in capsys.readouterr().out


# --- a crafted run directory never runs code ---------------------------------------------


class Payload:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(ckpt: Path, name: str, marker: Path, listed: bool) -> None:
    """A pickle that runs code, written into a checkpoint, listed in its manifest or not."""
    path = ckpt / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(pickle.dumps(Payload(marker)))
    if listed:  # the attacker rewrites the manifest too, with the right hash
        manifest = json.loads((ckpt / "manifest.json").read_text())
        manifest["files"][name] = {"bytes": path.stat().st_size,
                                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        (ckpt / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("planted, listed", [
    ("dcp/.metadata", False),  # added: never read, since the manifest does not list it
    ("dcp/.metadata", True),  # listed and hashed too: read without running code
    ("optimizer.pt", True),  # replaced and rehashed: read with weights_only
], ids=["sharded metadata, unlisted", "sharded metadata, listed", "optimizer state, listed"])
def test_a_crafted_checkpoint_never_runs_code(planted, listed, place, tmp_path, capsys):
    run = Run(place["run"])
    marker = tmp_path / "pwned"
    plant(latest_checkpoint(run), planted, marker, listed)
    commands = [["pretrain", "--resume", str(run.path), "train.max_steps=30"],
                ["checkpoint", "export", str(run.path), "--out", str(tmp_path / "w.st")],
                ["generate", "--run", str(run.path), "--prompt", "x", "--max-new-tokens", "2"],
                ["convert", "to-hf", str(run.path), str(tmp_path / "hf")]]
    if planted == "optimizer.pt":
        commands = commands[:1]  # only a resume reads the optimizer's state
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and ("manifest does not list" in err or
                                             "refusing to load it" in err), err
        assert not marker.exists(), f"{argv[0]} ran the planted code"


# --- data files that defeat Python's parsers: one reader (io.py), one line --------------

DEEP = "[" * 100_000  # RecursionError in json and yaml
LONG = "1" * 5_000  # ValueError: Python converts at most 4,300 digits to an int


@pytest.fixture
def bad_files(place) -> dict[str, Path]:
    """Files that break a parser deep inside (a line of them), written into the place."""
    root = place["root"]
    texts = {
        "deep.json": DEEP,
        "deep.jsonl": '{"text": "one fine line"}\n' + DEEP + "\n",
        "long.json": '[\n {"instruction": "a", "output": "b"},\n {"n": ' + LONG + "}\n]\n",
        "long.jsonl": '{"prompt": "a", "chosen": "b", "rejected": ' + LONG + "}\n",
        "deep.yaml": DEEP,
        "long.yaml": "model:\n  n_layer: " + LONG + "\n",
        "deepdata.yaml": "name: t\nkind: generation\ndata: deep.jsonl\nprompt: '{{text}}'\n"
                         "answer: '{{text}}'\n",
        "badregex.yaml": "name: t\nkind: generation\ndata: deep.jsonl\nprompt: '{{text}}'\n"
                         "answer: '{{text}}'\nextract: '(['\n",
        "badseed.yaml": "name: t\nkind: generation\ndata: deep.jsonl\nprompt: '{{text}}'\n"
                        "answer: '{{text}}'\nseed: -1\n",
    }
    for name, text in texts.items():
        (root / name).write_text(text)
    (root / "binary.jsonl").write_bytes(bytes(range(256)) * 4)
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    return {name.replace(".", "_"): root / name for name in [*texts, "binary.jsonl",
                                                              "binary.yaml"]}


NESTED, DIGITS = "nested 100,000 levels deep", "an integer of 5,000 digits"
DATA_CASES = {
    "sft, a .json list nested too deep": (
        ["finetune", "sft", "--base", "{run}", "--data", "{deep_json}", "--out", "{root}/new"],
        "deep.json:1: " + NESTED),
    "sft, a .json list with a long integer": (
        ["finetune", "sft", "--base", "{run}", "--data", "{long_json}", "--out", "{root}/new"],
        "long.json:3: " + DIGITS),
    "classify, a .jsonl line nested too deep": (
        ["finetune", "classify", "--base", "{run}", "--data", "{deep_jsonl}", "--out",
         "{root}/new"], "deep.jsonl:2: " + NESTED),
    "dpo, a .jsonl line with a long integer": (
        ["finetune", "dpo", "--base", "{run}", "--data", "{long_jsonl}", "--out", "{root}/new"],
        "long.jsonl:1: " + DIGITS),
    "rl, a binary file": (
        ["finetune", "rl", "--base", "{run}", "--data", "{binary_jsonl}", "--out", "{root}/new"],
        "is not UTF-8 text"),
    "eval tasks, task data nested too deep": (
        ["eval", "tasks", "--run", "{run}", "--tasks", "{deepdata_yaml}"],
        "deep.jsonl:2: " + NESTED),
    "eval tasks, a binary task file": (
        ["eval", "tasks", "--run", "{run}", "--tasks", "{binary_yaml}"], "is not UTF-8 text"),
    "eval tasks, a task file nested too deep": (
        ["eval", "tasks", "--run", "{run}", "--tasks", "{deep_yaml}"],
        "cannot be read at line 1: " + NESTED),
    "eval tasks, an extract that is not a regex": (
        ["eval", "tasks", "--run", "{run}", "--tasks", "{badregex_yaml}"],
        "extract '([' is not a regular expression"),
    "eval tasks, a negative task seed": (
        ["eval", "tasks", "--run", "{run}", "--tasks", "{badseed_yaml}"],
        "seed must be a whole number from 0 to 2^63 - 1"),
    "a config with a long integer": (
        ["pretrain", "--config", "{long_yaml}", "--out", "{root}/new"], "at line 2: " + DIGITS),
    "a config nested too deep": (
        ["pretrain", "--config", "{deep_yaml}", "--out", "{root}/new"], NESTED),
    "an override with a long integer": (
        ["pretrain", "--config", TINY_CONFIG, "--out", "{root}/new", "train.seed=" + LONG],
        DIGITS),
    "token ids nested too deep": (
        ["tokenizer", "decode", "--tokenizer", "gpt2", "--ids", DEEP], NESTED),
}


@pytest.mark.parametrize("case", DATA_CASES, ids=list(DATA_CASES))
def test_a_data_file_that_defeats_the_parser_is_one_line(case, place, bad_files, capsys):
    argv, message = DATA_CASES[case]
    argv = [a.format(**place, **bad_files) for a in argv]
    assert message in fails_in_one_line(capsys, argv, place)


def test_data_prepare_stopped_by_a_bad_line_leaves_nothing(place, bad_files, capsys):
    """The bad line is met while shards are being written: the folder being built goes."""
    argv = ["data", "prepare", "--data", str(bad_files["deep_jsonl"]), "--tokenizer", "gpt2",
            "--out", str(place["root"] / "prepared"), "--workers", "1"]
    line = fails_in_one_line(capsys, argv, place, after_progress=True)
    assert "deep.jsonl:2: " + NESTED in line


# --- numbers a 64-bit library cannot take: seeds, sizes --------------------------------

SEED_RULE = "must be a whole number from 0 to 2^63 - 1"
NUMBER_CASES = {
    "generate --seed 2^64": (["generate", "--run", "{run}", "--prompt", "x", "--seed",
                              str(2**64)], "seed " + SEED_RULE),
    "generate --seed -1": (["generate", "--run", "{run}", "--prompt", "x", "--seed", "-1"],
                           "seed " + SEED_RULE),
    "train.seed -1": (["pretrain", "--config", TINY_CONFIG, "--out", "{root}/new",
                       "train.seed=-1"], "train.seed " + SEED_RULE),
    "train.seed 2^70": (["pretrain", "--config", TINY_CONFIG, "--out", "{root}/new",
                         f"train.seed={2**70}"], "train.seed must be a whole number of 64 bits"),
    "model.n_embd 10^20": (["pretrain", "--config", TINY_CONFIG, "--out", "{root}/new",
                            f"model.n_embd={10**20}"], "model.n_embd must be a whole number of "
                                                       "64 bits"),
    "train.lr 10^400 (as an int)": (["pretrain", "--config", TINY_CONFIG, "--out",
                                     "{root}/new", f"train.lr={10**400}"],
                                    "train.lr must be a whole number of 64 bits"),
    "eval judge --seed -1": (["eval", "judge", "--run", "{run}", "--data", "{text}",
                              "--endpoint", "http://localhost:9/v1", "--model", "m", "--seed",
                              "-1"], "--seed " + SEED_RULE),
}


@pytest.mark.parametrize("case", NUMBER_CASES, ids=list(NUMBER_CASES))
def test_a_number_out_of_64_bits_is_one_line(case, place, capsys):
    argv, message = NUMBER_CASES[case]
    argv = [a.format(**place) for a in argv]
    assert message in fails_in_one_line(capsys, argv, place)


def test_the_largest_seed_draws_batches_and_splits():
    """2^63 - 1 is a seed: the per-epoch seeds derived from it stay in torch's range, and a
    split by numpy (which takes seeds below 2^32) is the split of the seed modulo 2^32."""
    windows = TokenWindows([np.arange(200)], seq_len=4, batch_size=2, seed=INT_MAX)
    assert [windows.next_batch()[0].shape for _ in range(60)][-1] == (2, 4)  # several epochs
    examples = ExampleBatches([Example([i, i + 1], [i + 1, -100]) for i in range(5)], 2,
                              seed=INT_MAX)
    assert len({tuple(examples.next_batch().input_ids[0].tolist()) for _ in range(10)}) > 1
    data = from_named_labels([f"text {i}" for i in range(20)], ["a", "b"] * 10)
    book = split_three_ways(data, seed=123)
    assert split_three_ways(data, seed=2**32 + 123)[0].texts == book[0].texts


# --- files of ours and of other tools, edited into nonsense ----------------------------


def test_a_result_file_edited_by_hand_is_one_line(place, capsys):
    """eval/TASK.json whose metrics is a string: compare, and a new evaluation, say so."""
    eval_dir = place["run"] / "eval"
    eval_dir.mkdir(exist_ok=True)
    (eval_dir / "t.json").write_text(json.dumps(
        {"format": RESULT_FORMAT, "task": "t", "kind": "generation", "metrics": "0.5",
         "examples": 3, "shots": 0, "centred": 0.5, "random_baseline": 0.0}))
    for argv in (["eval", "compare", str(place["run"])],
                 ["eval", "tasks", "--run", str(place["run"]), "--tasks", "next-line"]):
        line = fails_in_one_line(capsys, argv, place)
        assert "t.json is not a result as llmscratch writes it: metrics must be a mapping" in line


@pytest.fixture
def adapter(place) -> Path:
    """A PEFT adapter folder (rank 2, non-zero weights) made for the place's run."""
    model = load_model(Run(place["run"]))
    apply_lora(model, LoRAConfig(rank=2))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.fill_(0.01)
    return export_peft_adapter(model, place["root"] / "adapter")


def nan_weights(folder: Path) -> None:
    tensors = load_file(folder / "adapter_model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, folder / "adapter_model.safetensors")


LORA_CASES = {
    "a rank the tensors do not have": (lambda c: c.update(r=3), "should have rank 3"),
    "a rank that is not a whole number": (lambda c: c.update(r=2.5), "r must be a whole number"),
    "a rank that is a string": (lambda c: c.update(r="2"), "r must be a whole number"),
    "target modules that name nothing adapted": (
        lambda c: c.update(target_modules=["q_proj"]), "does not name transformer.h.0"),
    "a target module that matches no tensor": (
        lambda c: c["target_modules"].append("nothing"), "names nothing, which no tensor"),
    "an alpha pattern that is not a regex": (
        lambda c: c.update(alpha_pattern={"([": 4}), "is not a regular expression"),
    "an alpha that is not a number": (
        lambda c: c.update(lora_alpha="16"), "lora_alpha must be a finite number"),
}


@pytest.mark.parametrize("case", LORA_CASES, ids=list(LORA_CASES))
def test_lora_import_checks_the_config_against_the_tensors(case, place, adapter, capsys):
    edit, message = LORA_CASES[case]
    config = json.loads((adapter / "adapter_config.json").read_text())
    edit(config)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    argv = ["lora", "import", "--base", str(place["run"]), "--adapter", str(adapter), "--out",
            str(place["root"] / "new")]
    assert message in fails_in_one_line(capsys, argv, place)


def test_lora_import_refuses_weights_that_are_not_finite(place, adapter, capsys):
    argv = ["lora", "import", "--base", str(place["run"]), "--adapter", str(adapter), "--out",
            str(place["root"] / "imported")]
    assert main(argv) == 0  # the adapter as written imports
    capsys.readouterr()
    nan_weights(adapter)
    argv[-1] = str(place["root"] / "new")
    assert "holds NaN or infinite values" in fails_in_one_line(capsys, argv, place)


def test_a_tokenizer_with_an_id_far_beyond_the_others_is_one_line(place, capsys):
    """<|endoftext|> = 10^15 in a tokenizer file is refused when it is read (a model would
    need 10^15 embedding rows); a Hugging Face tokenizer with one id more than its model has
    rows, when the model is converted."""
    document = json.loads((place["run"] / "tokenizer" / "tokenizer.json").read_text())
    far = place["root"] / "far" / "tokenizer.json"
    far.parent.mkdir()
    far.write_text(json.dumps({**document, "special_tokens": {"<|endoftext|>": 10**15}}))
    line = fails_in_one_line(capsys, ["tokenizer", "encode", "--tokenizer", str(far),
                                      "--text", "hi"], place)
    assert "has the id 1,000,000,000,000,000, but there are only" in line

    folder = save_folder(hf_model("gpt2"), "gpt2", place["root"] / "hf")
    hf_tokenizer = json.loads((folder / "tokenizer.json").read_text())
    hf_tokenizer["added_tokens"].append({**hf_tokenizer["added_tokens"][0], "id": VOCAB,
                                         "content": "<|extra|>"})
    (folder / "tokenizer.json").write_text(json.dumps(hf_tokenizer))
    capsys.readouterr()  # transformers' progress bars while saving the folder
    line = fails_in_one_line(capsys, ["convert", "from-hf", str(folder),
                                      str(place["root"] / "new")], place)
    assert f"the tokenizer's ids run to {VOCAB}, but the model has {VOCAB} embedding" in line


@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", 10**20, "model.n_embd must be a whole number of 64 bits"),
    ("hidden_size", "x", "config.json: a value of the wrong type"),
    ("num_hidden_layers", 2.5, "model.n_layer must be of type int, got 2.5"),
    ("vocab_size", None, "model.vocab_size must be of type int, got None"),
])
def test_a_hugging_face_config_with_nonsense_is_one_line(field, value, message, place, capsys):
    folder = save_folder(hf_model("llama"), "llama", place["root"] / "hf")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, field: value}))
    capsys.readouterr()  # transformers' progress bars while saving the folder
    line = fails_in_one_line(capsys, ["convert", "from-hf", str(folder),
                                      str(place["root"] / "new")], place)
    assert message in line


def test_metrics_lines_edited_into_nonsense_are_skipped(place, capsys):
    """`plot` draws what metrics.jsonl measures and a resume truncates it, whatever lines
    were edited into it (a string step, a loss without tokens, JSON nested too deep)."""
    metrics = place["run"] / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '{"step": "x", "loss": "oops"}\n{"step": 25, "loss": 1.0}\n'
                       + DEEP + "\n")
    assert MetricsLog(metrics).read() == [json.loads(line) for line in good.splitlines()]
    assert main(["plot", str(place["run"])]) == 0
    assert main(["pretrain", "--resume", str(place["run"]), "train.max_steps=22",
                 "train.checkpoint_every=2"]) == 0
    steps = [r["step"] for r in MetricsLog(metrics).read()]
    assert steps == sorted(steps) and steps[-1] == 22 and 25 not in steps
