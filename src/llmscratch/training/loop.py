"""The one training loop.

    for each optimizer step:
        for each of grad_accum micro-batches:
            out = objective(model, batch)           (under autocast)
            out.loss_sum.backward()                 (gradients add up)
        count the units over micro-batches and processes; divide the gradients by it
        clip the gradient norm; set the learning rate; optimizer step
        now and then: log metrics, validate, checkpoint; then the callbacks

The objective (training/objectives.py) decides what is learned and returns a
sum of per-unit losses with its count; the loop only does the bookkeeping
every objective needs, so pretraining and the fine-tuning methods share it.
Dividing once, after accumulation and across processes, makes a step's
gradient the mean over all its units (tokens, sequences, pairs), however
they were split into micro-batches and processes.

Precision is applied here, from outside the model: with dtype bf16 the
forward runs under `torch.autocast`, so matmuls use bfloat16 while weights,
gradients and optimizer state stay fp32.

Data comes from a `BatchSource`: `next_batch(policy)` plus a small
`state_dict()` saved in every checkpoint, so a resumed run reads the
batches the uninterrupted run would have read. `policy` is the model being
trained, as it is now: a source of RL rollouts samples from it; text
windows ignore it. Under torchrun every process runs this same loop on its
own share of each batch; DDP or FSDP (training/parallel.py) keep the copies
in step, and only rank 0 logs and writes files.

What only one recipe needs (pretraining's time budget, its text samples) is
a `Callback`, run after each step, not part of the loop.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch
from torch.utils.tensorboard import SummaryWriter

from llmscratch.distributed import DistInfo, all_reduce_mean, all_reduce_sum, unwrap
from llmscratch.errors import LLMScratchError, TrainingInterrupted
from llmscratch.progress import progress, write
from llmscratch.runs.checkpoint import TrainState, save_checkpoint
from llmscratch.runs.config import TrainConfig
from llmscratch.runs.run import Run
from llmscratch.training.allocator import keep_freed_memory
from llmscratch.training.objectives import Objective
from llmscratch.training.optim import Schedule
from llmscratch.training.parallel import eager_forward
from llmscratch.training.precision import autocast_dtype
from llmscratch.training.throughput import memory_gb, mfu, peak_flops

MAX_BAD_STEPS = 10  # non-finite losses in a row before the run is stopped


class BatchSource(Protocol):
    """Where the loop's batches come from (data/loader.py: TokenWindows)."""

    def next_batch(self, policy: torch.nn.Module | None = None) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Callback:
    """Something a recipe adds to the loop (pretraining's time budget, its text samples).

    `on_fit_start` runs once before the first step; `on_step_end` after every
    good step, once its metrics, validation and checkpoint are done. A
    callback may change `trainer.cfg.max_steps` (the loop then ends there) and
    should call `trainer.restart_throughput_window()` after slow work of its own.
    """

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        pass

    def on_step_end(self, trainer: Trainer, state: TrainState) -> None:
        pass


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
        write("stopping after this step (Ctrl-C again to abort without a checkpoint)")

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


class Trainer:
    """Runs `objective` on batches of `data` for steps state.step .. cfg.max_steps.

    `cfg` is the run's train section (runs/config.py: TrainConfig, where each
    field is explained), settled by the recipe: `dtype` resolved ("bf16" or
    "fp32", never "auto") and `grad_accum` derived from `global_batch` when
    that is set. The loop reads max_steps, grad_accum, grad_clip, dtype,
    log_every, eval_every, checkpoint_every, keep_checkpoints, max_seconds,
    tensorboard and peak_flops. Two things are not in the config:
    `trainable_only`, checkpoints hold only the parameters that train (a
    fine-tuned run over its base run), and `label`, the progress bar's.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        data: BatchSource,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        cfg: TrainConfig,
        run: Run,
        device: torch.device,
        info: DistInfo | None = None,
        evaluate: Callable[[torch.nn.Module], dict] | None = None,
        callbacks: Sequence[Callback] = (),
        flops_per_token: float = 0.0,
        *,
        trainable_only: bool = False,
        label: str = "train",
    ) -> None:
        self.model = model
        self.objective = objective
        self.data = data
        self.optimizer = optimizer
        self.schedule = schedule
        self.cfg = cfg
        self.amp = autocast_dtype(cfg.dtype)  # (raises on an unresolved "auto")
        self.trainable_only, self.label = trainable_only, label
        self.run = run
        self.device = device
        self.info = info or DistInfo()
        self.evaluate = evaluate  # model -> {"val_loss": ..., ...}, every cfg.eval_every steps
        self.callbacks = list(callbacks)
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops(device, cfg.peak_flops)
        self.metrics = run.metrics
        self.tensorboard: SummaryWriter | None = None
        self.bar = None  # progress.progress(): a bar on a terminal, plain lines in a log
        self._window_start, self._window_tokens = time.perf_counter(), 0
        if device.type == "cpu":
            keep_freed_memory()  # big buffers reused step after step, not faulted in anew

    # --- one optimizer step ------------------------------------------------------------

    def train_step(self, state: TrainState) -> dict:
        """One optimizer step over `grad_accum` micro-batches; returns its metrics."""
        cfg, amp = self.cfg, self.amp
        sums: dict[str, list[float]] = {"loss": [0.0, 0.0]}  # name -> [sum, count]
        tokens = 0
        for micro in range(cfg.grad_accum):
            batch = self.data.next_batch(unwrap(self.model))
            # DDP averages gradients during backward; between micro-batches there is nothing
            # to average yet, so only the last backward of the step talks to the other ranks.
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") \
                else self.model.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=amp or torch.float32,
                                    enabled=amp is not None):
                    out = self.objective(self.model, batch)
                out.loss_sum.backward()
            for name, (value, count) in {"loss": (out.loss_sum.item(), out.units),
                                         **out.metrics}.items():
                total = sums.setdefault(name, [0.0, 0.0])
                total[0] += float(value)
                total[1] += float(count)
            tokens += out.tokens

        # One collective for every sum and count: every rank then decides alike.
        names = list(sums)
        totals = all_reduce_sum([x for n in names for x in sums[n]] + [tokens], self.info)
        reduced = {n: (totals[2 * i], totals[2 * i + 1]) for i, n in enumerate(names)}
        loss_sum, units = reduced["loss"]
        # Each process's gradients are sums over its own units, and DDP or FSDP
        # average them over the processes: world_size / units turns that into
        # the mean over every unit of the step.
        if units > 0:
            self._scale_gradients(self.info.world_size / units)
        # The norm before clipping is logged: a spike is the first sign of an unstable
        # run. With grad_clip 0 we only measure it.
        grad_norm = clip_gradients(self.model.parameters(),
                                   cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        loss = loss_sum / units if units > 0 else float("nan")
        factor = self.schedule.factor(state.step, cfg.max_steps)
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            # Each group's peak (training/optim.py) times the schedule's fraction.
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        metrics = {n: s / c for n, (s, c) in reduced.items() if n != "loss" and c > 0}
        return {"loss": loss, "lr": self.schedule.peak_lr * factor, "grad_norm": grad_norm,
                "tokens": int(totals[-1]), "finite": finite, "metrics": metrics}

    def _scale_gradients(self, scale: float) -> None:
        if scale != 1.0:
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)

    # --- the loop ----------------------------------------------------------------------

    def fit(self, state: TrainState) -> TrainState:
        """Train until cfg.max_steps; checkpoint at the end, on schedule and on Ctrl-C.

        Each pass tries one optimizer step. A non-finite one changes nothing and
        is skipped (`_skip_bad_step`); a good one is counted, the time limit is
        applied, then whatever is due follows (`_after_step`): a metrics
        record, validation, a checkpoint; then the callbacks.
        """
        cfg = self.cfg
        self.model.train()
        if self.info.is_main and cfg.tensorboard:
            self.tensorboard = SummaryWriter(log_dir=str(self.run.tensorboard_dir))
        self.bar = progress(total=cfg.max_steps, initial=state.step, desc=self.label,
                            unit="step", disable=not self.info.is_main)
        started = time.perf_counter()
        self.restart_throughput_window()
        for callback in self.callbacks:
            callback.on_fit_start(self, state)
        bad_in_a_row, out_of_time = 0, False
        try:
            with stop_on_ctrl_c() as stop_requested:
                while state.step < cfg.max_steps and not out_of_time:
                    if all_reduce_mean(float(stop_requested()), self.info) > 0:
                        self._close_bar()
                        self._checkpoint(state)
                        raise TrainingInterrupted(state.step)
                    out = self._try_step(state)
                    if not out["finite"]:
                        bad_in_a_row += 1
                        self._skip_bad_step(state, out, bad_in_a_row)
                        continue
                    bad_in_a_row = 0
                    state.step += 1
                    state.tokens_seen += out["tokens"]
                    self._window_tokens += out["tokens"]
                    self.bar.update(1)
                    out_of_time = self._out_of_time(state, started)
                    self._after_step(state, out, done=state.step >= cfg.max_steps or out_of_time)
                    for callback in self.callbacks:
                        callback.on_step_end(self, state)
        except LLMScratchError as err:  # a fault met while training: say what it left
            raise LLMScratchError(f"{err} ({self.run.checkpoint_note()})") from None
        finally:
            self._close_bar()  # before any error is printed, so it gets a line of its own
            if self.tensorboard is not None:
                self.tensorboard.close()
        return state

    def say(self, message: str) -> None:
        """A line of text above the progress bar (rank 0 only)."""
        if self.info.is_main:
            (self.bar.write if self.bar is not None else print)(message)

    def restart_throughput_window(self) -> None:
        """tokens/s counts training time only: restart after evaluation, sampling, ..."""
        self._window_start, self._window_tokens = time.perf_counter(), 0

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _try_step(self, state: TrainState) -> dict:
        """`train_step`; running out of memory in a run's first step becomes one line."""
        try:
            return self.train_step(state)
        except Exception as err:
            if state.step == self.bar.initial and _is_out_of_memory(err):
                raise LLMScratchError(
                    "out of memory in the first step; lower train.batch_size and raise "
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
                "lower train.lr or use train.dtype=fp32")

    def _out_of_time(self, state: TrainState, started: float) -> bool:
        """cfg.max_seconds ends the run like its last step (evaluate, checkpoint)."""
        cfg = self.cfg
        # Every rank must stop at the same step, so the ranks vote.
        out_of_time = cfg.max_seconds > 0 and all_reduce_mean(
            float(time.perf_counter() - started >= cfg.max_seconds), self.info) > 0
        if out_of_time:
            self.say(f"train.max_seconds={cfg.max_seconds:g} reached: stopping at step "
                     f"{state.step} of {cfg.max_steps}")
        return out_of_time

    def _after_step(self, state: TrainState, out: dict, done: bool) -> None:
        """What is due after a good step: a metrics record, validation, a checkpoint."""
        cfg = self.cfg
        if state.step % cfg.log_every == 0 or done:
            self._log_step(state, out)
        if self._due(cfg.eval_every, state.step, done) and self.evaluate is not None:
            self._validate(state)
            self.restart_throughput_window()  # evaluation is not training time
        if self._due(cfg.checkpoint_every, state.step, done):
            self._checkpoint(state)

    def _log_step(self, state: TrainState, out: dict) -> None:
        """The step's metrics record, tokens/s measured since the previous record."""
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        tok_per_s = self._window_tokens / elapsed
        record = {
            "step": state.step, "tokens": state.tokens_seen, "loss": out["loss"],
            **out["metrics"], "lr": out["lr"], "grad_norm": out["grad_norm"],
            "tok_per_s": tok_per_s, "mem_gb": round(memory_gb(self.device), 3),
        }
        # MFU per device: this process's share of the tokens against one peak.
        util = mfu(tok_per_s / self.info.world_size, self.flops_per_token, self.peak_flops)
        if util is not None:
            record["mfu"] = util
        self._log(record)
        self.bar.set_postfix(loss=f"{out['loss']:.3f}", lr=f"{out['lr']:.1e}",
                             tok_s=f"{tok_per_s:,.0f}")
        self.restart_throughput_window()

    def _checkpoint(self, state: TrainState) -> None:
        state.data = self.data.state_dict()
        save_checkpoint(self.run, self.model, self.optimizer, state,
                        keep=self.cfg.keep_checkpoints, info=self.info,
                        trainable_only=self.trainable_only)

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

    def _validate(self, state: TrainState) -> None:
        with eager_forward():  # a compiled forward would compile again for eval shapes
            result = self.evaluate(self.model)
        if not result:  # nothing held out to validate on: no line, no record
            return
        state.best_val_loss = min(state.best_val_loss, result.get("val_loss", math.inf))
        self._log({"step": state.step, "tokens": state.tokens_seen, **result})
        self.say(f"step {state.step:>6}: " + "  ".join(f"{k} {v:.4f}" for k, v in result.items()))
