"""A wall-time budget for a training run (``train.time_budget_min``): "train for as many steps as fit in an hour on
this machine", so that one recipe fills the hour on a slow laptop and a fast server alike.

The step count is decided at the end of the LR warm-up (until then no schedule depends on it): the median of the
steps taken since half-way through the warm-up gives the time of a step (a median, so that a burst of other work
on the machine does not count), a validation run at that point gives the time of one validation, and the largest
count (a multiple of 100, at most ``train.max_steps``) whose remaining steps and validations fit in what is left of
the budget is kept. The LR schedule is then stretched to it, as if ``train.max_steps`` had been that count from the
start (``leafseg.training.optimisation.retarget_lr_schedule``).

A warm-up is short (50 timed steps in the ``cpu`` recipe): another job running through it would make every step
look slow and the run stop far too early. So the count is revised at each validation in the first half of the
decided schedule, from the median of all steps timed so far, when it moves by more than :data:`REVISE_TOLERANCE`;
the LR schedule is stretched again from where it is. The decision is saved with each checkpoint, so a resumed run
keeps it. On a machine fast enough for ``train.max_steps`` inside the budget the run is the fixed-step run, bit for
bit; elsewhere two runs may decide counts a hundred apart (their step times differ), which the run folder records.
:class:`TimeBudget` is the engine's handler that does all of this; the functions below are its arithmetic.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

from accelerate.utils import broadcast_object_list
from omegaconf import DictConfig

from ..config_schema import MIN_WARMUP
from .handlers import Handler, Validation
from .run_log import say

if TYPE_CHECKING:
    from .engine import Trainer

GRANULARITY = 100  # decided counts are multiples of this: two runs on one machine rarely land a step apart
# The warm-up's steps run faster than a run's average (the cpu recipe on 2 cores: 0.298 s timed over steps 50-100,
# 0.322 s averaged over all 8500 steps of the same run): the timed step is taken this much longer.
STEP_SLACK = 1.10
REVISE_TOLERANCE = 0.05  # a revised count within 5% of the decided one is noise: the schedule is left alone


def planned_steps(tc: DictConfig) -> str:
    """The steps a run will take, as its start-up line says them."""
    if tc.time_budget_min is None:
        return str(tc.max_steps)
    return (f"{tc.max_steps} or as many as fit in train.time_budget_min={tc.time_budget_min:g} min (decided at the end "
            f"of the {tc.warmup_steps}-step warm-up)")


def budget_note(tc: DictConfig, state: dict) -> str:
    """What a model card says of the budget's decision ("" without a budget)."""
    if tc.time_budget_min is None:
        return ""
    return (f" (train.max_steps {tc.max_steps}; train.time_budget_min {tc.time_budget_min:g} decided "
            f"{state.get('budget_steps', 'not yet')})")


def step_seconds(times: list[float]) -> float:
    """The time of a step from the timed steps: their median (a burst of other work skews a mean, not a median)."""
    return statistics.median(times)


def worth_revising(decided: int, revised: int) -> bool:
    """Whether a revised step count differs from the decided one by more than :data:`REVISE_TOLERANCE`."""
    return abs(revised - decided) > REVISE_TOLERANCE * decided


def events_after(step: int, end: int, every: int) -> int:
    """How many of the steps step+1 .. end carry an event that comes every ``every`` steps and at the last one."""
    if end <= step:
        return 0
    return end // every - step // every + (1 if end % every else 0)


def steps_in_budget(budget_s: float, elapsed_s: float, step: int, step_s: float, validation_s: float,
                    val_every: int | None, cap: int) -> int:
    """The largest step count N, ``step`` < N <= ``cap``, a multiple of :data:`GRANULARITY` (or ``cap`` itself),
    whose remaining ``N - step`` steps (each ``step_s`` x :data:`STEP_SLACK`) and the validations among them fit in
    ``budget_s - elapsed_s``; ``step`` when not even the next multiple fits. ``val_every`` None: no validations."""
    left, step_s = budget_s - elapsed_s, step_s * STEP_SLACK

    def cost(n: int) -> float:
        vals = events_after(step, n, val_every) if val_every else 0
        return (n - step) * step_s + vals * validation_s

    if cost(cap) <= left:
        return cap
    n = (min(cap, step + int(left / max(step_s, 1e-9)) + GRANULARITY) // GRANULARITY) * GRANULARITY
    while n > step and cost(n) > left:  # a few iterations: validations only shorten the first guess a little
        n -= GRANULARITY
    return max(n, step)


class TimeBudget(Handler):
    """``train.time_budget_min``: times the steps (validations and checkpoints left out), refuses a warm-up that
    cannot end inside the budget, decides the step count at the end of the warm-up (timing a validation there),
    revises it at the validations of the first half, and keeps a resumed run's decision. It validates through the
    engine's :class:`~leafseg.training.handlers.Validation` handler, which then skips that step."""

    def __init__(self, validation: Validation):
        self.validation = validation
        # seconds of each step since half-way through the warm-up: what the count is decided and revised from
        self.step_times: list[float] = []
        self._tick: float | None = None  # when the step now running began

    def started(self, engine: Trainer) -> None:
        tc = engine.cfg.train
        self.budget_s = None if tc.time_budget_min is None else tc.time_budget_min * 60
        if self.budget_s is not None and engine.state.get("budget_steps") is not None:  # decided before the resume
            engine.set_max_steps(min(engine.max_steps, int(engine.state["budget_steps"])))

    def step_started(self, engine: Trainer) -> None:
        if self.budget_s is not None:
            self._tick = time.perf_counter()

    def step_done(self, engine: Trainer, losses, extra_logs) -> None:
        if self.budget_s is None:
            return
        tc, state, step = engine.cfg.train, engine.state, engine.state["step"]
        warmup = int(tc.warmup_steps)
        if self._tick is not None and (step > warmup // 2 or "budget_steps" not in state):
            self.step_times.append(time.perf_counter() - self._tick)
        if "budget_steps" not in state:
            if step == MIN_WARMUP < warmup:
                self._check_warmup_fits(engine, step)
            if step == warmup:
                self._decide(engine, step)
            elif step == warmup // 2:
                self.step_times.clear()  # decided from the second half of the warm-up, at full LR
        elif engine.has_val and step % int(tc.val_every) == 0 and step <= engine.max_steps // 2:
            self.validation.run(engine, step)
            self._revise(engine, step)

    def _elapsed(self, engine: Trainer) -> float:
        return sum(s["total_s"] for s in engine.earlier_timings) + engine.clock.elapsed()

    def _count(self, engine: Trainer, step: int) -> tuple[int, float, float]:
        """(steps that fit the budget, seconds a step, seconds a validation) from the times so far, the same on
        every rank (the main process's)."""
        tc = engine.cfg.train
        step_s = step_seconds(self.step_times)
        times = self.validation.times
        validation_s = statistics.mean(times) if times else 0.0
        decision = [steps_in_budget(self.budget_s, self._elapsed(engine), step, step_s, validation_s,
                                    int(tc.val_every) if engine.has_val else None, int(tc.max_steps))]
        broadcast_object_list(decision)  # every rank stops at the main process's count
        return int(decision[0]), step_s, validation_s

    def _check_warmup_fits(self, engine: Trainer, step: int) -> None:
        """After :data:`MIN_WARMUP` steps: refuse a budget the LR warm-up cannot end inside (the count is decided
        at its end), before more of the budget is spent."""
        tc = engine.cfg.train
        warmup, step_s = int(tc.warmup_steps), step_seconds(self.step_times)
        needed = [self._elapsed(engine) + (warmup - step) * step_s]
        broadcast_object_list(needed)  # every rank stops, or none
        if needed[0] > self.budget_s:
            raise ValueError(
                f"train.time_budget_min={tc.time_budget_min:g}: the LR warm-up (train.warmup_steps={warmup}) "
                f"would end after {needed[0] / 60:.1f} min at {step_s:.3f} s a step on this machine, "
                f"and the step count is decided at its end; lower train.warmup_steps, raise the budget, or build on "
                f"a recipe made for a budget (base: cpu)")

    def _decide(self, engine: Trainer, step: int) -> None:
        """At the end of the warm-up: the step count that fits the budget, a validation timed first."""
        tc = engine.cfg.train
        if engine.has_val:
            self.validation.run(engine, step)
        total, step_s, validation_s = self._count(engine, step)
        self._set(engine, total)
        fits = "all of them fit" if total == int(tc.max_steps) else f"{total} of them fit"
        say(f"time budget {tc.time_budget_min:g} min: {self._elapsed(engine) / 60:.1f} min spent, a step takes "
            f"{step_s:.3f} s and a validation {validation_s:.1f} s; of train.max_steps {tc.max_steps} "
            f"steps {fits}, the LR schedule ends at step {total}")

    def _revise(self, engine: Trainer, step: int) -> None:
        """At a validation in the first half of the decided schedule: the count again, from every step timed so
        far, kept when it moved by more than REVISE_TOLERANCE (a warm-up slowed by another job is corrected)."""
        if len(self.step_times) < MIN_WARMUP // 2:  # just resumed: fewer steps timed than the decision had
            return
        total, step_s, _ = self._count(engine, step)
        if worth_revising(engine.max_steps, total):
            say(f"time budget revised at step {step}: a step takes {step_s:.3f} s (median of "
                f"{len(self.step_times)}); the LR schedule now ends at step {total} instead of {engine.max_steps}")
            self._set(engine, total)

    def _set(self, engine: Trainer, total: int) -> None:
        engine.state["budget_steps"] = total
        engine.set_max_steps(total)
        engine.progress.total = total
        engine.progress.refresh()
