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
from typing import Any

import torch
from tqdm import tqdm

from llmscratch.config import TrainConfig
from llmscratch.errors import LLMScratchError
from llmscratch.training.checkpoint import TrainState, save_checkpoint
from llmscratch.training.metrics import MetricsLog
from llmscratch.training.objectives import Objective
from llmscratch.training.optim import lr_at

MAX_BAD_STEPS = 10  # non-finite losses in a row before the run is stopped


class TrainingInterrupted(Exception):
    """Ctrl-C during training; a checkpoint of the last finished step was saved."""

    def __init__(self, step: int) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step = step


@dataclass
class Hooks:
    """What the loop calls now and then; each is optional.

    evaluate(model) -> dict of metrics (e.g. val_loss, val_bpb)
    sample(model, step) -> None (writes samples somewhere; every train.sample_every steps)
    """

    evaluate: Callable[[torch.nn.Module], dict] | None = None
    sample: Callable[[torch.nn.Module, int], None] | None = None


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


def autocast_dtype(cfg: TrainConfig) -> torch.dtype | None:
    return torch.bfloat16 if cfg.dtype == "bf16" else None


class Trainer:
    """Runs `objective` on `next_batch(i)` for steps state.step .. cfg.max_steps."""

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        next_batch: Callable[[int], Any],
        optimizer: torch.optim.Optimizer,
        cfg: TrainConfig,
        run_dir: Path,
        device: torch.device,
        hooks: Hooks | None = None,
    ) -> None:
        self.model = model
        self.objective = objective
        self.next_batch = next_batch
        self.optimizer = optimizer
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = device
        self.hooks = hooks or Hooks()
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")

    def train_step(self, state: TrainState) -> dict:
        """One optimizer step over `grad_accum` micro-batches; returns its metrics."""
        cfg = self.cfg
        amp = autocast_dtype(cfg)
        total_loss, tokens = 0.0, 0
        for micro in range(cfg.grad_accum):
            batch = self.next_batch(state.step * cfg.grad_accum + micro)
            with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss, info = self.objective(self.model, batch)
            (loss / cfg.grad_accum).backward()
            total_loss += loss.item() / cfg.grad_accum
            tokens += info.get("tokens", 0)

        # Clipping returns the norm before clipping: a spike here is the first
        # sign of an unstable run. With grad_clip 0 we only measure it.
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        lr = lr_at(state.step, cfg)
        finite = math.isfinite(total_loss) and math.isfinite(grad_norm)
        if finite:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": total_loss, "lr": lr, "grad_norm": grad_norm, "tokens": tokens,
                "finite": finite}

    def fit(self, state: TrainState) -> TrainState:
        """Train until cfg.max_steps; checkpoint at the end, on schedule and on Ctrl-C."""
        cfg = self.cfg
        self.model.train()
        bar = tqdm(total=cfg.max_steps, initial=state.step, desc="pretrain", unit="step",
                   dynamic_ncols=True)
        bad_in_a_row, window_tokens, window_start = 0, 0, time.perf_counter()
        with stop_on_ctrl_c() as stop_requested:
            while state.step < cfg.max_steps:
                if stop_requested():
                    bar.close()
                    save_checkpoint(self.run_dir, self.model, self.optimizer, state)
                    raise TrainingInterrupted(state.step)
                out = self.train_step(state)
                if not out["finite"]:
                    bad_in_a_row += 1
                    self.metrics.write({"step": state.step, "skipped": "non-finite loss or grad"})
                    if bad_in_a_row >= MAX_BAD_STEPS:
                        raise LLMScratchError(
                            f"{bad_in_a_row} non-finite steps in a row at step {state.step}; "
                            "lower train.lr or use train.dtype=fp32 (last checkpoint is intact)"
                        )
                    continue
                bad_in_a_row = 0
                state.step += 1
                state.tokens_seen += out["tokens"]
                window_tokens += out["tokens"]
                bar.update(1)
                done = state.step == cfg.max_steps
                if state.step % cfg.log_every == 0 or done:
                    elapsed = time.perf_counter() - window_start
                    tok_per_s = window_tokens / max(elapsed, 1e-9)
                    self.metrics.write({
                        "step": state.step, "tokens": state.tokens_seen, "loss": out["loss"],
                        "lr": out["lr"], "grad_norm": out["grad_norm"], "tok_per_s": tok_per_s,
                    })
                    bar.set_postfix(loss=f"{out['loss']:.3f}", lr=f"{out['lr']:.1e}",
                                    tok_s=f"{tok_per_s:,.0f}")
                    window_tokens, window_start = 0, time.perf_counter()
                if self._due(cfg.eval_every, state.step, done) and self.hooks.evaluate:
                    self._validate(state, bar)
                if cfg.sample_every and state.step % cfg.sample_every == 0 and self.hooks.sample:
                    self.hooks.sample(self.model, state.step)
                if self._due(cfg.checkpoint_every, state.step, done):
                    save_checkpoint(self.run_dir, self.model, self.optimizer, state)
                if any(self._due(e, state.step, done) for e in (cfg.eval_every, cfg.sample_every)):
                    window_start = time.perf_counter()  # don't count evaluation as training time
                    window_tokens = 0
        bar.close()
        return state

    @staticmethod
    def _due(every: int, step: int, done: bool) -> bool:
        return done or (every > 0 and step % every == 0)

    def _validate(self, state: TrainState, bar: tqdm) -> None:
        result = self.hooks.evaluate(self.model)
        state.best_val_loss = min(state.best_val_loss, result["val_loss"])
        self.metrics.write({"step": state.step, "tokens": state.tokens_seen, **result})
        bar.write(f"step {state.step:>6}: " + "  ".join(f"{k} {v:.4f}" for k, v in result.items()))
