"""`train.budget_seconds`: size a pretraining run to the time this machine has.

The demo must finish in about ten minutes on whatever CPU runs it, and CPUs
differ by a factor of five. So after timing the first steps, this callback
lowers the run's length (`max_steps`, never raising it) to the steps that
fit in the budget, and the learning-rate schedule follows the new length.

When it may decide. In a new run whose warm-up lasts at least the steps
timed here, the first plan falls inside the warm-up, where the learning rate
does not depend on the run's length: every step then follows the schedule
of the length chosen. A cosine schedule depends on the length at every
step, so its length is fixed at that first plan. With WSD the learning rate
holds its peak until the decay, so the length is planned again every
REPLAN_EVERY steps from the speed so far, and fixed when the decay is about
to begin: a machine whose speed changes still ends on time. Processes may
time differently; they agree on the mean of their answers. A later plan may
lengthen the run again when the machine has sped up, up to the configured
max_steps. Each plan is reported to `on_plan` (the recipe saves it in the
run's config.yaml).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from llmscratch.distributed import all_reduce_mean
from llmscratch.runs.checkpoint import TrainState
from llmscratch.training.loop import Callback, Trainer

# The first steps of a process are slow (memory is allocated, kernels are
# chosen), so these are skipped, and the next ones are timed.
SKIPPED_STEPS = 5
TIMED_STEPS = 20
# With the WSD schedule the run's length is planned again every this many steps
# until its decay begins.
REPLAN_EVERY = 100


class TimeBudget(Callback):
    """Lower `trainer.cfg.max_steps` so that training takes about `budget_seconds`."""

    def __init__(self, budget_seconds: float, on_plan: Callable[[int], None]) -> None:
        self.budget = budget_seconds
        self.on_plan = on_plan
        self.cap = 0  # the configured max_steps: a plan never goes above it
        self.started = self.timed_from = 0.0
        self.steps = 0  # steps this process has trained
        self.decided = False

    def on_fit_start(self, trainer: Trainer, state: TrainState) -> None:
        self.started = time.perf_counter()
        self.cap = trainer.cfg.max_steps

    def on_step_end(self, trainer: Trainer, state: TrainState) -> None:
        self.steps += 1
        if self.steps == SKIPPED_STEPS:
            self.timed_from = time.perf_counter()
        timed = self.steps - SKIPPED_STEPS
        if self.decided or timed < TIMED_STEPS or (timed - TIMED_STEPS) % REPLAN_EVERY:
            return
        # Seconds per step so far, evaluation and checkpoints included.
        now = time.perf_counter()
        self._plan(trainer, state, (now - self.timed_from) / timed, now - self.started,
                   first=timed == TIMED_STEPS)

    def _plan(self, trainer: Trainer, state: TrainState, per_step: float, elapsed: float,
              first: bool) -> None:
        cfg = trainer.cfg
        fits = state.step + max(self.budget - elapsed, 0.0) / per_step
        fits = int(all_reduce_mean(fits, trainer.info))
        # At least one more step: the loop's last step is the one that evaluates and
        # checkpoints, so the plan cannot end the run on a step that is already done.
        planned = min(self.cap, max(fits, state.step + 1))
        if first or planned != cfg.max_steps:
            trainer.say(f"train.budget_seconds={self.budget:g}: {per_step:.3f} s per step so "
                        f"far, so {planned} steps (train.max_steps was {cfg.max_steps})")
        cfg.max_steps = planned
        trainer.bar.total = planned
        trainer.bar.refresh()
        schedule = trainer.schedule
        if schedule.kind != "wsd" or state.step + REPLAN_EVERY >= schedule.decay_start(planned):
            self.decided = True  # a resume keeps this length
        self.on_plan(planned)
