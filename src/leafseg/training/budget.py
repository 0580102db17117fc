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
"""

from __future__ import annotations

import statistics

GRANULARITY = 100  # decided counts are multiples of this: two runs on one machine rarely land a step apart
# The warm-up's steps run faster than a run's average (the cpu recipe on 2 cores: 0.298 s timed over steps 50-100,
# 0.322 s averaged over all 8500 steps of the same run): the timed step is taken this much longer.
STEP_SLACK = 1.10
REVISE_TOLERANCE = 0.05  # a revised count within 5% of the decided one is noise: the schedule is left alone


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
