"""The one training loop.

    for each optimizer step:
        for each of grad_accum micro-batches:
            loss = objective(model, batch) / grad_accum     (under autocast)
            loss.backward()                                 (gradients add up)
        clip the gradient norm; set the learning rate; optimizer step
        now and then: log metrics, validate, sample, checkpoint

The objective (training/objectives.py) decides what is learned; the loop
only does the bookkeeping every objective needs, so pretraining and the
fine-tuning methods share it. Precision is applied here, from outside the
model: with dtype bf16 the forward runs under `torch.autocast`, so matmuls
use bfloat16 while weights, gradients and optimizer state stay fp32.

Data comes from a `BatchSource`: `next_batch()` plus a small `state_dict()`
saved in every checkpoint, so a resumed run reads the batches the
uninterrupted run would have read. Under torchrun every process runs this
same loop on its own share of each batch; DDP or FSDP (training/parallel.py)
keep the copies in step, and only rank 0 logs and writes files.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from llmscratch.config import TrainConfig
from llmscratch.errors import LLMScratchError, TrainingInterrupted
from llmscratch.training.checkpoint import TrainState, save_checkpoint
from llmscratch.training.metrics import MetricsLog
from llmscratch.training.objectives import Objective
from llmscratch.training.optim import lr_at, wsd_decay_start
from llmscratch.training.parallel import DistInfo, all_reduce_mean
from llmscratch.training.precision import autocast_dtype
from llmscratch.training.throughput import memory_gb, mfu, peak_flops

MAX_BAD_STEPS = 10  # non-finite losses in a row before the run is stopped
# train.budget_seconds: the first steps of a process are slow (memory is allocated,
# kernels are chosen), so these are skipped, and the next ones are timed.
BUDGET_SKIPPED_STEPS = 5
BUDGET_TIMED_STEPS = 20
# With the WSD schedule the run's length is planned again every this many steps
# until its decay begins: a machine whose speed changes still ends on time.
BUDGET_REPLAN_EVERY = 100


class BatchSource(Protocol):
    """Where the loop's batches come from (data/loader.py: TokenWindows)."""

    def next_batch(self) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Hooks:
    """What the loop calls now and then; each is optional.

    evaluate(model) -> dict of metrics (e.g. val_loss, val_bpb)
    sample(model, step) -> None (writes samples somewhere; every train.sample_every steps)
    planned(max_steps) -> None (each time train.budget_seconds plans the run's length)
    """

    evaluate: Callable[[torch.nn.Module], dict] | None = None
    sample: Callable[[torch.nn.Module, int], None] | None = None
    planned: Callable[[int], None] | None = None


@contextlib.contextmanager
def stop_on_ctrl_c() -> Iterator[Callable[[], bool]]:
    """Turn the first Ctrl-C into a request to stop after the current step.

    Stopping between steps keeps weights, optimizer and step count in
    agreement, so the checkpoint written on the way out resumes exactly.
    A second Ctrl-C interrupts at once, as usual.
    """
    requested = False

    def handler(signum, frame):
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True
        tqdm.write("stopping after this step (Ctrl-C again to abort without a checkpoint)")

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)


def _is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err))


def clip_gradients(parameters, max_norm: float) -> float:
    """Scale gradients so their global L2 norm is at most `max_norm`; return the norm before.

    The result is bit for bit that of `torch.nn.utils.clip_grad_norm_`, which
    multiplies every gradient by min(1, max_norm / (norm + 1e-6)); here the
    multiplication by exactly 1 is skipped, saving a pass over all gradients
    in the usual case where nothing needs clipping. Under FSDP the gradients
    are shards and the norm is reduced over all ranks.
    """
    parameters = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
    if float(max_norm / (norm + 1e-6)) < 1.0:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


@dataclass
class _Clocks:
    """The timing of one `Trainer.fit` call in this process (time.perf_counter seconds)."""

    started: float  # fit began: train.max_seconds and train.budget_seconds count from here
    budget_from: float  # train.budget_seconds times the steps after BUDGET_SKIPPED_STEPS
    window_start: float  # tokens/s is measured over a window of training time only
    window_tokens: int = 0
    steps: int = 0  # optimizer steps this process has tried, skipped ones included

    def restart_window(self) -> None:
        self.window_start, self.window_tokens = time.perf_counter(), 0


class Trainer:
    """Runs `objective` on batches of `data` for steps state.step .. cfg.max_steps."""

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        data: BatchSource,
        optimizer: torch.optim.Optimizer,
        cfg: TrainConfig,
        run_dir: Path,
        device: torch.device,
        hooks: Hooks | None = None,
        info: DistInfo | None = None,
        grad_accum: int | None = None,
        flops_per_token: float = 0.0,
    ) -> None:
        self.model = model
        self.objective = objective
        self.data = data
        self.optimizer = optimizer
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = device
        self.hooks = hooks or Hooks()
        self.info = info or DistInfo()
        self.grad_accum = grad_accum or cfg.grad_accum
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops(device, cfg.peak_flops)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self.tensorboard = None

    def train_step(self, state: TrainState) -> dict:
        """One optimizer step over `grad_accum` micro-batches; returns its metrics."""
        cfg = self.cfg
        amp = autocast_dtype(cfg.dtype)
        total_loss, tokens = 0.0, 0
        for micro in range(self.grad_accum):
            batch = self.data.next_batch()
            # DDP averages gradients during backward; between micro-batches there is nothing
            # to average yet, so only the last backward of the step talks to the other ranks.
            last = micro == self.grad_accum - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") \
                else self.model.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=amp or torch.float32,
                                    enabled=amp is not None):
                    loss, info = self.objective(self.model, batch)
                (loss / self.grad_accum).backward()
            total_loss += loss.item() / self.grad_accum
            tokens += info.get("tokens", 0)

        # The norm before clipping is logged: a spike is the first sign of an unstable
        # run. With grad_clip 0 we only measure it.
        grad_norm = clip_gradients(self.model.parameters(),
                                   cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        total_loss = all_reduce_mean(total_loss, self.info)  # every rank decides alike
        lr = lr_at(state.step, cfg)
        finite = math.isfinite(total_loss) and math.isfinite(grad_norm)
        if finite:
            # Each group's peak (training/optim.py) times the schedule's fraction of train.lr.
            for group in self.optimizer.param_groups:
                group["lr"] = group.get("initial_lr", cfg.lr) * lr / cfg.lr
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": total_loss, "lr": lr, "grad_norm": grad_norm,
                "tokens": tokens * self.info.world_size, "finite": finite}

    def fit(self, state: TrainState) -> TrainState:
        """Train until cfg.max_steps; checkpoint at the end, on schedule and on Ctrl-C.

        Each pass tries one optimizer step. A non-finite one changes nothing and
        is skipped (`_skip_bad_step`); a good one is counted, the time limits
        are applied (`_keep_time`), then whatever is due follows: a metrics
        record, validation, samples, a checkpoint (`_after_step`).
        """
        cfg = self.cfg
        self.model.train()
        if self.info.is_main and cfg.tensorboard:
            self.tensorboard = _tensorboard_writer(self.run_dir)
        bar = tqdm(total=cfg.max_steps, initial=state.step, desc="pretrain", unit="step",
                   dynamic_ncols=True, disable=not self.info.is_main)
        now = time.perf_counter()
        clocks = _Clocks(started=now, budget_from=now, window_start=now)
        step_cap = cfg.max_steps  # train.budget_seconds may shorten the run, never lengthen it
        first_step, bad_in_a_row, out_of_time = state.step, 0, False
        with stop_on_ctrl_c() as stop_requested, bar:
            while state.step < cfg.max_steps and not out_of_time:
                if all_reduce_mean(float(stop_requested()), self.info) > 0:
                    bar.close()
                    self._checkpoint(state)
                    raise TrainingInterrupted(state.step)
                out = self._try_step(state, first_step)
                clocks.steps += 1
                if not out["finite"]:
                    bad_in_a_row += 1
                    self._skip_bad_step(state, out, bad_in_a_row)
                    continue
                bad_in_a_row = 0
                state.step += 1
                state.tokens_seen += out["tokens"]
                clocks.window_tokens += out["tokens"]
                bar.update(1)
                out_of_time = self._keep_time(state, clocks, step_cap, bar)
                self._after_step(state, out, clocks, bar,
                                 done=state.step == cfg.max_steps or out_of_time)
        if self.tensorboard is not None:
            self.tensorboard.close()
        return state

    def _try_step(self, state: TrainState, first_step: int) -> dict:
        """`train_step`; running out of memory in a run's first step becomes one line."""
        try:
            return self.train_step(state)
        except Exception as err:
            if state.step == first_step and _is_out_of_memory(err):
                raise LLMScratchError(
                    f"out of memory in the first step (train.batch_size="
                    f"{self.cfg.batch_size}); lower train.batch_size and raise "
                    "train.grad_accum to keep the same batch, or set "
                    "train.activation_checkpointing=true") from None
            raise

    def _skip_bad_step(self, state: TrainState, out: dict, bad_in_a_row: int) -> None:
        """Log a step that had a non-finite loss or gradient; stop after MAX_BAD_STEPS in a row.

        `train_step` has not touched the weights; the batch is spent and the
        step is tried again with the next one. The record goes under the step
        it tried to take, its values as text: JSON has no NaN or infinity.
        """
        self._log({"step": state.step + 1, "skipped": "non-finite loss or grad",
                   "bad_loss": str(out["loss"]), "bad_grad_norm": str(out["grad_norm"])})
        if bad_in_a_row >= MAX_BAD_STEPS:
            raise LLMScratchError(
                f"{bad_in_a_row} non-finite steps in a row trying step {state.step + 1}; "
                "lower train.lr or use train.dtype=fp32 (the last checkpoint is intact)")

    def _keep_time(self, state: TrainState, clocks: _Clocks, step_cap: int, bar: tqdm) -> bool:
        """Apply train.budget_seconds and train.max_seconds after a step; True when time is up."""
        cfg = self.cfg
        if clocks.steps == BUDGET_SKIPPED_STEPS:
            clocks.budget_from = time.perf_counter()
        timed = clocks.steps - BUDGET_SKIPPED_STEPS
        if cfg.budget_seconds and timed >= BUDGET_TIMED_STEPS and (
                (timed - BUDGET_TIMED_STEPS) % BUDGET_REPLAN_EVERY == 0):
            # Seconds per step so far, evaluation and checkpoints included.
            per_step = (time.perf_counter() - clocks.budget_from) / timed
            self._fit_to_budget(state, per_step, time.perf_counter() - clocks.started,
                                step_cap, first=timed == BUDGET_TIMED_STEPS, bar=bar)
        # The time limit ends the run like its last step (evaluate, checkpoint);
        # every rank must stop at the same step, so the ranks vote.
        out_of_time = cfg.max_seconds > 0 and all_reduce_mean(
            float(time.perf_counter() - clocks.started >= cfg.max_seconds), self.info) > 0
        if out_of_time and self.info.is_main:
            bar.write(f"train.max_seconds={cfg.max_seconds:g} reached: stopping at step "
                      f"{state.step} of {cfg.max_steps}")
        return out_of_time

    def _after_step(self, state: TrainState, out: dict, clocks: _Clocks, bar: tqdm,
                    done: bool) -> None:
        """What is due after a good step: a metrics record, validation, samples, a checkpoint."""
        cfg = self.cfg
        if state.step % cfg.log_every == 0 or done:
            self._log_step(state, out, clocks, bar)
        if self._due(cfg.eval_every, state.step, done) and self.hooks.evaluate:
            self._validate(state, bar)
        if cfg.sample_every and state.step % cfg.sample_every == 0 and self.hooks.sample:
            self.hooks.sample(self.model, state.step)
        if self._due(cfg.checkpoint_every, state.step, done):
            self._checkpoint(state)
        if any(self._due(e, state.step, done) for e in (cfg.eval_every, cfg.sample_every)):
            clocks.restart_window()  # evaluation and sampling are not training time

    def _log_step(self, state: TrainState, out: dict, clocks: _Clocks, bar: tqdm) -> None:
        """The step's metrics record, tokens/s measured since the previous record."""
        tok_per_s = clocks.window_tokens / max(time.perf_counter() - clocks.window_start, 1e-9)
        record = {
            "step": state.step, "tokens": state.tokens_seen, "loss": out["loss"],
            "lr": out["lr"], "grad_norm": out["grad_norm"], "tok_per_s": tok_per_s,
            "mem_gb": round(memory_gb(self.device), 3),
        }
        # MFU per device: this process's share of the tokens against one peak.
        util = mfu(tok_per_s / self.info.world_size, self.flops_per_token, self.peak_flops)
        if util is not None:
            record["mfu"] = util
        self._log(record)
        bar.set_postfix(loss=f"{out['loss']:.3f}", lr=f"{out['lr']:.1e}",
                        tok_s=f"{tok_per_s:,.0f}")
        clocks.restart_window()

    def _fit_to_budget(self, state: TrainState, per_step: float, elapsed: float,
                       step_cap: int, first: bool, bar: tqdm) -> None:
        """Set cfg.max_steps (at most step_cap) so that training takes about cfg.budget_seconds.

        First called after a process's first 25 steps. In a new run whose
        warm-up lasts 25 steps or more, that is still inside the warm-up, where
        the learning rate does not depend on the run's length: so every step
        follows the schedule of the length chosen here. A cosine schedule
        depends on the length at every step, so its length is fixed then. With
        WSD the learning rate holds its peak until the decay, so the length is
        planned again every BUDGET_REPLAN_EVERY steps from the speed so far,
        and fixed when the decay is about to begin. Processes may time
        differently; they agree on the mean of their answers.
        """
        cfg = self.cfg
        fits = state.step + max(cfg.budget_seconds - elapsed, 0.0) / per_step
        fits = int(all_reduce_mean(fits, self.info))
        planned = min(step_cap, max(fits, state.step))
        if self.info.is_main and (first or planned != cfg.max_steps):
            bar.write(f"train.budget_seconds={cfg.budget_seconds:g}: {per_step:.3f} s per step "
                      f"so far, so {planned} steps (train.max_steps was {cfg.max_steps})")
        cfg.max_steps = planned
        if cfg.schedule != "wsd" or state.step + BUDGET_REPLAN_EVERY >= wsd_decay_start(cfg):
            cfg.budget_seconds = 0.0  # decided: a resume keeps this length
        bar.total = planned
        bar.refresh()
        if self.hooks.planned:
            self.hooks.planned(planned)

    def _checkpoint(self, state: TrainState) -> None:
        state.data = self.data.state_dict()
        save_checkpoint(self.run_dir, self.model, self.optimizer, state,
                        keep=self.cfg.keep_checkpoints, info=self.info)

    def _log(self, record: dict) -> None:
        """One metrics record: metrics.jsonl always, TensorBoard when asked; rank 0 only."""
        if not self.info.is_main:
            return
        self.metrics.write(record)
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in ("step", "tokens") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, record["step"])

    @staticmethod
    def _due(every: int, step: int, done: bool) -> bool:
        return done or (every > 0 and step % every == 0)

    def _validate(self, state: TrainState, bar: tqdm) -> None:
        result = self.hooks.evaluate(self.model)
        state.best_val_loss = min(state.best_val_loss, result["val_loss"])
        self._log({"step": state.step, "tokens": state.tokens_seen, **result})
        if self.info.is_main:
            bar.write(f"step {state.step:>6}: "
                      + "  ".join(f"{k} {v:.4f}" for k, v in result.items()))


def _tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise LLMScratchError("train.tensorboard=true needs the tensorboard package: "
                              "pip install 'llmscratch[tensorboard]'") from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
