"""Where a run's wall time goes (data, frozen targets, steps, validations, checkpoints), per process and summed
over the processes of a resumed run.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

class WallTime:
    """Where one training process's wall time goes: data loading, frozen targets (caches, teacher, networks), the
    optimiser steps, validations, and checkpoints (with the model-best exports). Saved with each checkpoint and
    written to ``logs/timings.json`` at the end (summed over the processes of a resumed run), so that "an hour" can
    be split without reading progress bars."""

    PHASES = ("data", "frozen_targets", "validation", "checkpoints")

    def __init__(self):
        self.t0 = time.perf_counter()
        self.seconds = {name: 0.0 for name in self.PHASES}
        self.counts = {name: 0 for name in self.PHASES}
        self.first_step_s: float | None = None
        self.at_first_step: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t
            self.counts[name] += 1

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def first_step(self) -> None:
        self.first_step_s = time.perf_counter() - self.t0
        self.at_first_step = dict(self.seconds)

    def summary(self, steps: tuple[int, int]) -> dict:
        """Seconds per phase of this process so far. ``steps_s`` is the wall time after the first step began less
        its validations and checkpoints (forward, backward, optimiser, EMA, logging). Times start after the Python
        imports."""
        total = time.perf_counter() - self.t0
        before = total if self.first_step_s is None else self.first_step_s
        at_first = self.at_first_step or self.seconds
        later = sum(self.seconds[k] - at_first[k] for k in ("validation", "checkpoints"))
        return {"total_s": round(total, 1), "before_first_step_s": round(before, 1),
                **{f"{k}_s": round(v, 1) for k, v in self.seconds.items()},
                "validations": self.counts["validation"], "checkpoints": self.counts["checkpoints"],
                "steps_s": round(total - before - later, 1), "steps": {"from": steps[0], "to": steps[1]}}


def combine_timings(segments: list[dict]) -> dict:
    """The timings of a run trained by several processes (started, interrupted, resumed): seconds and counts
    summed, steps from the first segment's start to the last one's end, and the segments themselves. An
    interrupted process counts up to its last checkpoint: the steps it took after it were redone, and their time
    is not in the sum. One segment comes back as it is."""
    if len(segments) == 1:
        return segments[0]
    summed = {}
    for key, value in segments[-1].items():
        if isinstance(value, (int, float)):
            total = sum(s.get(key, 0) for s in segments)
            summed[key] = round(total, 1) if key.endswith("_s") else total
    return {**summed, "steps": {"from": segments[0]["steps"]["from"], "to": segments[-1]["steps"]["to"]},
            "segments": segments}



def timing_line(t: dict) -> str:
    """One line of :meth:`WallTime.summary` (or :func:`combine_timings`) for the console and the run log."""
    return (f"wall {t['total_s'] / 60:.1f} min (after imports): data {t['data_s']:.0f} s, frozen targets "
            f"{t['frozen_targets_s']:.0f} s, first step at {t['before_first_step_s']:.0f} s; steps "
            f"{t['steps_s'] / 60:.1f} min, {t['validations']} validation(s) {t['validation_s']:.0f} s, "
            f"checkpoints and exports {t['checkpoints_s']:.0f} s")
