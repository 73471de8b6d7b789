"""Pretraining, end to end: text -> tokenizer -> tokens -> trained model -> report.

`pretrain(config, out_dir)` is what `llmscratch pretrain` and the demo run:

1. check that a run may be created at `out_dir` (nothing there, or a run to
   replace when asked), and read the data: the text and its tokenizer, or
   prepared shards (recipes/pretrain_data.py), checking all of it;
2. only then create the run directory (runs/run.py) and lock it;
3. build the model from `config.model` and run the training loop with the
   next-token objective, validating, sampling and checkpointing on schedule;
4. score the whole validation text, write samples, the plots and report.md.

`resume(run_dir)` reads the saved config (with any overrides) and checks it
against the newest checkpoint, rebuilds the data, loads the checkpoint and
continues to `train.max_steps`; the config is saved only once all of that
has worked, so a resume that fails changes nothing.

Both run unchanged under `torchrun --nproc-per-node N`: each process joins
the group, rank 0 creates the run directory and the tokenizer, and every
rank trains on its share of each batch (training/parallel.py).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmscratch.data.loader import TokenWindows
from llmscratch.distributed import DistInfo, barrier
from llmscratch.errors import LLMScratchError
from llmscratch.evaluation.perplexity import EvalResult, score_windows
from llmscratch.generation.sampling import SamplingConfig, generate
from llmscratch.model import GPT, ModelConfig
from llmscratch.recipes.budget import TimeBudget
from llmscratch.recipes.pretrain_data import RunData, load_data
from llmscratch.recipes.processes import processes
from llmscratch.recipes.report import write_report, write_samples
from llmscratch.runs.checkpoint import (
    TrainState,
    checkpoint_config,
    load_checkpoint,
    resumable_checkpoint,
)
from llmscratch.runs.config import RunConfig
from llmscratch.runs.run import END_OF_TEXT_TOKENS, GenerationSettings, Run, RunInfo
from llmscratch.training.loop import Callback, Trainer
from llmscratch.training.objectives import NextTokenPrediction
from llmscratch.training.optim import Schedule, build_optimizer
from llmscratch.training.parallel import check_global_batch, eager_forward, parallelize
from llmscratch.training.plots import plot_losses, plot_training
from llmscratch.training.precision import autocast_dtype

# Model fields that may change when a run is resumed: they do not change its weights.
RESUMABLE_MODEL_FIELDS = ("dropout", "attn_impl")


@dataclass
class PretrainResult:
    run_dir: Path
    final: EvalResult  # on the whole validation text
    train_seconds: float
    tokens_per_second: float
    samples: list[tuple[str, str]]  # (prompt, completion)
    rank: int = 0  # under torchrun, only rank 0 reports
    steps: int = 0  # optimizer steps done in all (train.max_steps unless stopped early)
    first_step: int = 0  # the step this process started from (0, or a resumed checkpoint's)


class SampleText(Callback):
    """Text from the model for each of `prompts`, every `every` steps (0: only at the end),
    appended to the run's samples.md."""

    def __init__(self, model: GPT, data: RunData, run: Run, prompts: list[str], tokens: int,
                 seed: int, every: int, info: DistInfo) -> None:
        self.model, self.tokenizer, self.run, self.info = model, data.tokenizer, run, info
        self.prompts = [p for p in prompts if p] if tokens > 0 else []
        self.every = every
        self.sampling = SamplingConfig(max_new_tokens=max(tokens, 1), temperature=0.8, top_k=50,
                                       seed=seed)
        self.stop_ids = run.generation_settings().stop_token_ids

    def on_step_end(self, trainer: Trainer, state: TrainState) -> None:
        if self.every and state.step % self.every == 0:
            self.sample(state.step)
            trainer.restart_throughput_window()  # sampling is not training time

    def sample(self, step: int) -> list[tuple[str, str]]:
        outs = []
        with eager_forward():  # the cache grows each token: a new shape each time
            for prompt in self.prompts:  # every rank generates (FSDP needs all), rank 0 writes
                ids = generate(self.model, self.tokenizer.encode(prompt), self.sampling,
                               self.stop_ids, self.tokenizer.vocab_size)
                outs.append((prompt, self.tokenizer.decode(ids)))
        if self.info.is_main and outs:
            write_samples(self.run.samples_path, step, outs)
        return outs


def pretrain(config: RunConfig, out_dir: Path, overwrite: bool = False) -> PretrainResult:
    """Start a new run in `out_dir` (see the module docstring)."""
    out_dir = Path(out_dir)
    _check_seq_len(config)
    Run.check_new(out_dir, overwrite)  # before the data is read: fail fast, change nothing
    with processes(config) as (info, device):
        # Rank 0 reads the data and takes (or trains) the tokenizer, then creates the run
        # with it; the other ranks read the tokenizer from there.
        data = load_data(config, info) if info.is_main else None
        if info.is_main:
            _check_windows(config, data)
            stop_ids = [data.tokenizer.special_tokens[t] for t in END_OF_TEXT_TOKENS
                        if t in data.tokenizer.special_tokens]
            Run.create(out_dir, config, RunInfo(kind="pretrain",
                                                generation=GenerationSettings(stop_ids)),
                       data.tokenizer, overwrite)
        barrier(info)
        run = Run(out_dir)
        with run.removed_without_checkpoint() if info.is_main else contextlib.nullcontext():
            if data is None:
                data = load_data(config, info, run.tokenizer())
            with run.lock() if info.is_main else contextlib.nullcontext():
                return _train(config, run, data, None, info, device)


def resume(run_dir: Path, overrides: list[str] | tuple = (), fallback: bool = False
           ) -> PretrainResult:
    """Continue the run in `run_dir` from its newest (good) checkpoint to train.max_steps."""
    run = Run.open(run_dir)
    ckpt = resumable_checkpoint(run, "pretrain", fallback=fallback)
    config = run.read_config(overrides)
    _check_seq_len(config)
    _check_same_model(config.model, checkpoint_config(ckpt), ckpt)
    with processes(config) as (info, device):
        with run.lock() if info.is_main else contextlib.nullcontext():
            data = load_data(config, info, run.tokenizer())
            return _train(config, run, data, ckpt, info, device)


def _check_seq_len(config: RunConfig) -> None:
    if config.train.seq_len > config.model.context_length:
        raise LLMScratchError(
            f"train.seq_len={config.train.seq_len} is longer than model.context_length="
            f"{config.model.context_length}; lower train.seq_len")


def _check_windows(config: RunConfig, data: RunData) -> None:
    """Fail now, before the run exists, if the training text holds no window to train on."""
    cfg = config.train
    TokenWindows(data.train_arrays, cfg.seq_len or config.model.context_length, cfg.batch_size,
                 cfg.seed)


def _check_same_model(model: ModelConfig, saved: RunConfig | None, ckpt: Path) -> None:
    """A resume may not change the architecture its checkpoint's weights belong to."""
    if saved is None:  # a checkpoint from before configs were kept: its weights will tell
        return
    for name, value in vars(model).items():
        if name not in RESUMABLE_MODEL_FIELDS and getattr(saved.model, name) != value:
            raise LLMScratchError(
                f"model.{name}={value!r} does not fit checkpoint {ckpt.name}, whose weights "
                f"were trained with model.{name}={getattr(saved.model, name)!r}; the model "
                "cannot change on resume (start a new run instead)")


def _train(config: RunConfig, run: Run, data: RunData, ckpt: Path | None, info: DistInfo,
           device: torch.device) -> PretrainResult:
    """Build the model and the loop, train (from `ckpt` if given), then evaluate and report."""
    cfg = config.train
    say = print if info.is_main else (lambda *args, **kwargs: None)
    torch.manual_seed(cfg.seed)
    raw_model = GPT(config.model).to(device)
    seq_len = cfg.seq_len or config.model.context_length
    model = parallelize(raw_model, cfg, info, device)
    optimizer = build_optimizer(model, cfg)
    grad_accum = cfg.grad_accum = check_global_batch(cfg, info)  # for this many processes
    batches = TokenWindows(data.train_arrays, seq_len, cfg.batch_size, cfg.seed,
                           info.rank, info.world_size)
    state = TrainState()
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizer, info)
        # Checkpoints from before loaders kept state: the position was the step count.
        batches.position = state.step * grad_accum
        batches.load_state_dict(state.data)
        if info.is_main:  # everything checked: now the run may change
            run.save_config(config)
            run.metrics.truncate_after(state.step)
        say(f"resuming from {ckpt.name} (step {state.step} of {cfg.max_steps})")
    step_tokens = batches.global_batch * grad_accum * seq_len
    say(f"model: {raw_model.num_params() / 1e6:.2f}M parameters; {cfg.max_steps} steps of "
        f"{step_tokens:,} tokens ({batches.epochs(cfg.max_steps * grad_accum):.2f} epochs) on "
        f"{info.world_size} x {device}" + (f" ({cfg.parallel})" if info.distributed else ""))

    amp = autocast_dtype(cfg.dtype)
    bytes_per_token = data.val_bytes / max(len(data.val_ids) - 1, 1)

    # Evaluation and sampling use the model itself: a DDP wrapper only adds gradient sync.
    def evaluate(m: torch.nn.Module) -> dict:
        nats, n = score_windows(raw_model, data.val_ids, config.model.context_length,
                                autocast_dtype=amp, max_windows=cfg.eval_batches * 8)
        loss = nats / max(n, 1)
        return {"val_loss": loss, "val_bpb": loss / math.log(2) / bytes_per_token}

    samples = SampleText(raw_model, data, run, cfg.prompts, cfg.sample_tokens, cfg.seed,
                         cfg.sample_every, info)
    callbacks: list[Callback] = [samples]
    if cfg.budget_seconds:
        callbacks.append(TimeBudget(cfg.budget_seconds, on_plan=_save_plan(run, config, info)))
    trainer = Trainer(model, NextTokenPrediction(device), batches, optimizer,
                      Schedule.from_train(cfg), cfg, run, device, info, evaluate, callbacks,
                      raw_model.flops_per_token(seq_len), label="pretrain")
    started = time.perf_counter()
    tokens_before, first_step = state.tokens_seen, state.step
    state = trainer.fit(state)
    train_seconds = time.perf_counter() - started
    tok_per_s = (state.tokens_seen - tokens_before) / max(train_seconds, 1e-9)
    result = _finish(config, run, raw_model, data, samples, state, info,
                     train_seconds, tok_per_s)
    result.first_step = first_step
    return result


def _save_plan(run: Run, config: RunConfig, info: DistInfo):
    """train.budget_seconds chose the run's length: save it, without the budget, so that a
    resume keeps the length planned last."""
    def save(max_steps: int) -> None:
        if info.is_main:
            saved = copy.deepcopy(config)
            saved.train.max_steps, saved.train.budget_seconds = max_steps, 0.0
            run.save_config(saved)
    return save


def _finish(config: RunConfig, run: Run, model: GPT, data: RunData, samples: SampleText,
            state: TrainState, info: DistInfo, train_seconds: float,
            tok_per_s: float) -> PretrainResult:
    """Score the whole validation text; write samples, metrics, plots and report.md."""
    with eager_forward():  # its last window is shorter: a new shape to compile for
        nats, n_tokens = score_windows(model, data.val_ids, config.model.context_length,
                                       autocast_dtype=autocast_dtype(config.train.dtype))
    loss = nats / max(n_tokens, 1)
    final = EvalResult(loss=loss, perplexity=math.exp(min(loss, 700.0)),
                       bpb=nats / math.log(2) / max(data.val_bytes, 1), tokens=n_tokens,
                       bytes=data.val_bytes)
    texts = samples.sample(state.step)
    result = PretrainResult(run.path, final, train_seconds, tok_per_s, texts, info.rank,
                            state.step)
    if info.is_main:
        run.metrics.write({"step": state.step, "tokens": state.tokens_seen,
                           "final_val_loss": final.loss, "final_val_bpb": final.bpb,
                           "final_val_perplexity": final.perplexity})
        records = run.metrics.read()
        plot_losses(records, run.loss_plot_path, title=f"{run.path.name}: loss")
        plot_training(records, run.training_plot_path, title=run.path.name)
        write_report(run, config, result, model.num_params())
    return result
