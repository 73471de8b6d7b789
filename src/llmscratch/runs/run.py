"""A run directory, and the one place that knows its layout.

    RUN/
      run.json                    what the run is: its kind, its base run, generation settings
      config.yaml                 the resolved RunConfig (an imported model: its model section)
      tokenizer/tokenizer.json    the tokenizer the model reads
      checkpoints/step-NNNNNNNN/  complete checkpoints (runs/checkpoint.py)
      checkpoints/latest          the name of the newest one
      metrics.jsonl               one JSON record per logged step (runs/metrics.py)
      loss.png, training.png      plots of the metrics
      samples.md, report.md       what a pretraining run wrote about itself
      eval/                       evaluation results (JSON) and their plots; TASK.json and
                                  TASK.examples.jsonl from `llmscratch eval tasks`
      splits/NAME.jsonl           a classifier's train/validation/test texts, as first read
      splits/reference-logps.json a DPO run's reference log-probabilities, computed once
      tensorboard/                event files, when asked for
      hf/                         an imported model's own tokenizer files and chat template
      .lock                       held by the process that trains the run

Every command that reads or writes a run goes through `Run`: nothing else
spells these names. A directory is a run when it holds config.yaml and
either run.json or checkpoints/latest (runs made before run.json existed).

Creating never destroys what is not ours. `Run.create` refuses a folder
that is not a run, replaces a run only when asked and never a run the new
one is made from (its base, or any run that one builds on), and builds the new
run in a temporary folder beside it that is renamed into place at the end:
a failure or a kill leaves the old run, or nothing, never half of each.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmscratch.errors import LLMScratchError
from llmscratch.io import (
    atomic_write_json,
    check_output_folder,
    read_json,
    sha256_file,
    write_folder,
)
from llmscratch.runs.config import RunConfig, load_config, save_config
from llmscratch.runs.metrics import MetricsLog
from llmscratch.tokenizer import Tokenizer

# The config.yaml sections each kind of run saves (runs/config.py).
SECTIONS_OF_KIND = {"import": ("model",), "merged": ("model",),
                    "finetune": ("model", "train", "finetune", "align"),
                    "": ("model", "data", "train")}
INFO_FORMAT = "llmscratch-run"
INFO_VERSION = 1
# Special tokens that end a text, for runs that do not name their own stop ids
# (ours: <|endoftext|>; Llama 3's base models: <|end_of_text|>).
END_OF_TEXT_TOKENS = ("<|endoftext|>", "<|end_of_text|>")
MAX_BASE_DEPTH = 8  # a run built on a run built on ...: more than this is a cycle


@dataclass
class GenerationSettings:
    """How to generate with a run's model: when to stop, and how to lay out a chat.

    stop_token_ids: generation ends at any of these (the token itself is not output).
    chat_template: a Jinja chat template (an imported model's own), or None: ours
        (tokenizer/chat.py).
    bos_token, eos_token: the special tokens' text, which templates may name.
    """

    stop_token_ids: list[int] = field(default_factory=list)
    chat_template: str | None = None
    bos_token: str = ""
    eos_token: str = ""


@dataclass
class BaseRun:
    """The run whose weights a run builds on, when its checkpoints hold only what it trains.

    run: the base run's directory: relative to this run's directory, or absolute.
    checkpoint: the base checkpoint's name (step-NNNNNNNN).
    manifest_sha256: the SHA-256 of that checkpoint's manifest.json, which lists the
        hash of each of its files: adapters trained on one base are never laid over
        another that took its place.
    """

    run: str
    checkpoint: str
    manifest_sha256: str = ""

    @classmethod
    def of(cls, base: Run, checkpoint: str, new_run_dir: str | os.PathLike) -> BaseRun:
        """`base`'s checkpoint, named relative to the new run (the two can move together)."""
        relative = os.path.relpath(base.path.resolve(), Path(new_run_dir).resolve())
        manifest = base.checkpoints_dir / checkpoint / "manifest.json"
        return cls(relative, checkpoint, sha256_file(manifest) if manifest.is_file() else "")


@dataclass
class RunInfo:
    """run.json: what a run is.

    kind: "pretrain" (trained here), "import" (converted from Hugging Face),
        "finetune" (adapted from a base run by `llmscratch finetune`) or "merged"
        (a fine-tuned run's adapters folded into a full model: `llmscratch lora merge`).
    source: where an imported model came from.
    base: the run this one builds on (fine-tuning), or None.
    labels: a classifier's class names, in the order of its head's outputs.
    """

    kind: str = "pretrain"
    source: str = ""
    base: BaseRun | None = None
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    labels: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "format": INFO_FORMAT, "version": INFO_VERSION, "kind": self.kind,
            "source": self.source,
            "base": None if self.base is None else vars(self.base),
            "generation": vars(self.generation),
            "labels": self.labels,
        }

    @classmethod
    def from_json(cls, document: dict, path: Path) -> RunInfo:
        if document.get("format") != INFO_FORMAT or document.get("version") != INFO_VERSION:
            raise LLMScratchError(f"{path} is not a version-{INFO_VERSION} {INFO_FORMAT} file")
        try:
            base = document.get("base")
            generation = GenerationSettings(**document.get("generation") or {})
            if not all(isinstance(i, int) for i in generation.stop_token_ids):
                raise TypeError("stop_token_ids must be integers")
            labels = document.get("labels") or []
            if not all(isinstance(name, str) for name in labels):
                raise TypeError("labels must be strings")
            return cls(kind=str(document["kind"]), source=str(document.get("source", "")),
                       base=BaseRun(**base) if base else None, generation=generation,
                       labels=list(labels))
        except (KeyError, TypeError) as err:
            raise LLMScratchError(f"{path} is corrupt ({err})") from None


class Run:
    """A run directory: its files by role, and how to create, open and lock it."""

    CONFIG = "config.yaml"
    INFO = "run.json"
    TOKENIZER = "tokenizer"
    CHECKPOINTS = "checkpoints"
    LATEST = "latest"
    METRICS = "metrics.jsonl"
    LOCK = ".lock"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # --- the layout ------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def info_path(self) -> Path:
        return self.path / self.INFO

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / self.TOKENIZER

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def latest_path(self) -> Path:
        return self.checkpoints_dir / self.LATEST

    @property
    def metrics(self) -> MetricsLog:
        return MetricsLog(self.path / self.METRICS)

    @property
    def loss_plot_path(self) -> Path:
        return self.path / "loss.png"

    @property
    def training_plot_path(self) -> Path:
        return self.path / "training.png"

    @property
    def samples_path(self) -> Path:
        return self.path / "samples.md"

    @property
    def report_path(self) -> Path:
        return self.path / "report.md"

    @property
    def eval_dir(self) -> Path:
        """Evaluation results (JSON) and their plots."""
        return self.path / "eval"

    def eval_result_path(self, task: str) -> Path:
        """A task's scores (`llmscratch eval tasks`): eval/TASK.json."""
        return self.eval_dir / f"{task}.json"

    def eval_examples_path(self, task: str) -> Path:
        """A task's examples, one JSON line each as they are scored: eval/TASK.examples.jsonl."""
        return self.eval_dir / f"{task}.examples.jsonl"

    def eval_result_paths(self) -> list[Path]:
        """Every JSON file of eval/, by name (task results and fine-tuning's before/after)."""
        return sorted(self.eval_dir.glob("*.json")) if self.eval_dir.is_dir() else []

    def split_path(self, name: str) -> Path:
        """A fine-tuning run's data split `name` (train, validation, test), as first read."""
        return self.path / "splits" / f"{name}.jsonl"

    @property
    def reference_path(self) -> Path:
        """A DPO run's reference log-probabilities, computed once before training."""
        return self.path / "splits" / "reference-logps.json"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def hf_dir(self) -> Path:
        """An imported model's own tokenizer files and chat template, kept for export."""
        return self.path / "hf"

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step:08d}"

    def checkpoint_dirs(self) -> list[Path]:
        """Every checkpoint folder, oldest first (hidden, half-written ones excluded)."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoints_dir.glob("step-*") if p.is_dir())

    # --- what is a run ---------------------------------------------------------------

    @classmethod
    def is_run(cls, path: str | os.PathLike) -> bool:
        path = Path(path)
        return (path / cls.CONFIG).is_file() and (
            (path / cls.INFO).is_file() or (path / cls.CHECKPOINTS / cls.LATEST).is_file())

    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        """An existing run, or one line saying why `path` is not one."""
        path = Path(path)
        if not path.exists():
            raise LLMScratchError(f"run directory {path} not found")
        if not cls.is_run(path):
            raise LLMScratchError(
                f"{path} is not a run directory (no config.yaml with run.json or "
                "checkpoints/latest); give the --out directory of a pretrain run or of "
                "`llmscratch convert from-hf`")
        return cls(path)

    @classmethod
    def check_new(cls, path: str | os.PathLike, overwrite: bool,
                  inputs: Iterable[str | os.PathLike] = ()) -> None:
        """Fail, changing nothing, unless a run may be created at `path`.

        The rule of every output folder (io.py: `check_output_folder`): an
        empty or missing folder is fine; a run is replaced only with
        `overwrite` and when no process holds it; anything else is refused.
        And a run never replaces what it is made from: `path` may not be any
        of the runs in `inputs` (the base, a reference model...) nor a run any
        of them builds on.
        """
        path = Path(path)
        for run in inputs:
            for ancestor in Run(run).lineage() if Path(run).is_dir() else []:
                if not ancestor.resolve().is_relative_to(path.resolve()):
                    continue
                what = "the run it reads" if ancestor == Run(run).path else \
                    f"a run that {run} builds on"
                raise LLMScratchError(f"--out {path} would replace {ancestor}, {what}; a run "
                                      "never replaces itself or a run it builds on: choose "
                                      "another --out")
        existing = cls(path)
        hint = f" (or continue it: `{existing.resume_command()}`)" \
            if cls.is_run(path) and existing.resume_command() else ""
        check_output_folder(path, overwrite, cls.is_run, "a run directory", hint)
        if cls.is_run(path):
            existing.check_unlocked()

    @classmethod
    def create(cls, path: str | os.PathLike, config: RunConfig, info: RunInfo,
               tokenizer: Tokenizer, overwrite: bool = False,
               fill: Callable[[Run], None] | None = None,
               inputs: Iterable[str | os.PathLike] = ()) -> Run:
        """A new run at `path` with its run.json, config.yaml, tokenizer, and whatever
        `fill(run)` writes into it (an imported model's weights).

        Call it once everything the run needs has been checked: it is the
        first step that changes anything. The run is written in a temporary
        folder beside `path`, then renamed into place (replacing an old run
        only with `overwrite`, never one of `inputs`: see `check_new`).
        """
        cls.check_new(path, overwrite, inputs)

        def write(folder: Path) -> None:
            new = cls(folder)
            new.write_info(info)
            new.save_config(config, info)
            tokenizer.save(new.tokenizer_dir)
            if fill is not None:
                fill(new)

        return cls(write_folder(path, write))

    def lineage(self) -> list[Path]:
        """This run's folder, then its base run's, and so on (as far as they exist)."""
        chain, run = [self.path], self
        while len(chain) <= MAX_BASE_DEPTH and run.info_path.is_file():
            try:
                base = run.read_info().base
            except LLMScratchError:
                break
            if base is None:
                break
            run = Run((run.path / base.run).resolve())
            if run.path in chain or not run.path.is_dir():
                break
            chain.append(run.path)
        return chain

    def resume_command(self) -> str:
        """The command that continues this run's training ("" for a run that does not
        train: an imported or merged model)."""
        kind = self.read_info().kind if self.info_path.is_file() else "pretrain"
        return {"pretrain": f"llmscratch pretrain --resume {self.path}",
                "finetune": f"llmscratch finetune resume {self.path}"}.get(kind, "")

    def checkpoint_note(self) -> str:
        """What a failure while training left: the newest checkpoint, or none."""
        if self.latest_path.is_file():
            name = self.latest_path.read_text().strip()
            return f"the previous checkpoint, {name}, is intact"
        return "no checkpoint had been written"

    @contextlib.contextmanager
    def removed_without_checkpoint(self) -> Iterator[None]:
        """For a run this process has just created: if what follows fails before the run's
        first checkpoint, remove the run, leaving nothing half-made behind."""
        try:
            yield
        except BaseException as err:
            if self.latest_path.is_file() or not self.path.is_dir():
                raise
            shutil.rmtree(self.path, ignore_errors=True)
            if isinstance(err, LLMScratchError):
                raise LLMScratchError(f"{err}; {self.path} was removed") from None
            raise

    # --- contents --------------------------------------------------------------------

    def read_config(self, overrides=()) -> RunConfig:
        return load_config(self.config_path, overrides)

    def save_config(self, config: RunConfig, info: RunInfo | None = None) -> None:
        """config.yaml, with the sections a run of its kind uses: an imported model's run
        keeps only the model section (nothing of pretraining, such as sample prompts,
        applies to it), a fine-tuning run has no data section (its data is in finetune)."""
        kind = (info or self.read_info()).kind
        save_config(config, self.config_path, SECTIONS_OF_KIND.get(kind, SECTIONS_OF_KIND[""]))

    def read_info(self) -> RunInfo:
        """run.json; for a run made before run.json existed, what it must have been."""
        if not self.info_path.is_file():
            return RunInfo(generation=GenerationSettings(self._end_of_text_ids()))
        return RunInfo.from_json(read_json(self.info_path, "the run's"), self.info_path)

    def write_info(self, info: RunInfo) -> None:
        atomic_write_json(self.info_path, info.to_json())

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.tokenizer_dir)

    def generation_settings(self) -> GenerationSettings:
        return self.read_info().generation

    def _end_of_text_ids(self) -> list[int]:
        specials = self.tokenizer().special_tokens
        return [specials[t] for t in END_OF_TEXT_TOKENS if t in specials]

    def base_run(self) -> tuple[Run, str] | None:
        """The run this one builds on and its checkpoint's name, or None."""
        base = self.read_info().base
        if base is None:
            return None
        where = (self.path / base.run).resolve()
        if not where.is_dir():
            raise LLMScratchError(f"{self.path} builds on the run {base.run} ({self.INFO}: "
                                  f"base.run, relative to {self.path}), which is not at {where}; "
                                  "put it back there, or move the two runs together")
        run = Run.open(where)
        manifest = run.checkpoints_dir / base.checkpoint / "manifest.json"
        if not manifest.is_file():
            raise LLMScratchError(f"{self.path} builds on {run.path} {base.checkpoint}, which "
                                  "is gone; restore it (or the whole base run)")
        if base.manifest_sha256 and sha256_file(manifest) != base.manifest_sha256:
            raise LLMScratchError(f"{self.path} was trained on another {run.path} "
                                  f"{base.checkpoint} than the one there now (its weights "
                                  "differ): its tensors apply only to the base they were "
                                  "trained on")
        return run, base.checkpoint

    # --- one process at a time -------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run for this process; a second process trying to gets one clear line.

        An advisory lock (flock) on RUN/.lock, released when the process ends,
        however it ends: a killed run never leaves a stale lock behind.
        """
        try:
            fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise LLMScratchError(f"cannot lock run {self.path}: {err.strerror}") from None
        try:
            self._flock_or_fail(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            os.close(fd)

    def check_unlocked(self) -> None:
        """Fail if another process holds the run's lock (see `lock`).

        Only a look: a shared lock, dropped at once, and nothing written. So
        processes that look at the same moment never see each other as
        training the run (every rank of a torchrun job checks its --out).
        """
        try:
            fd = os.open(self.path / self.LOCK, os.O_RDONLY)
        except FileNotFoundError:
            return
        except OSError as err:
            raise LLMScratchError(f"cannot lock run {self.path}: {err.strerror}") from None
        try:
            self._flock_or_fail(fd, fcntl.LOCK_SH)
        finally:
            os.close(fd)

    def _flock_or_fail(self, fd: int, kind: int) -> None:
        """Take lock `kind` (fcntl.LOCK_EX or LOCK_SH) on `fd` without waiting; if another
        process holds the run, fail with a message naming it."""
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise LLMScratchError(self._in_use_message()) from None

    def _in_use_message(self) -> str:
        try:
            pid = (self.path / self.LOCK).read_text().strip()
        except OSError:
            pid = "?"
        return (f"run {self.path} is in use by another process (pid {pid}); wait for it to "
                "finish, or stop it first")

