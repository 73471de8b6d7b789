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
import shutil
from pathlib import Path

import pytest
import yaml

from llmscratch.cli import main
from llmscratch.errors import LLMScratchError
from llmscratch.io import sha256_file
from llmscratch.runs import checkpoint as checkpoint_module
from llmscratch.runs.checkpoint import latest_checkpoint
from llmscratch.runs.run import Run
from tests.conftest import TINY_CONFIG


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
    assert "No space left on device" in last and "the previous checkpoint is intact" in last
    assert latest_checkpoint(run).name == "step-00000020"  # verified intact
    assert not list(run.checkpoints_dir.glob(".*tmp"))  # no half-written folder left


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
