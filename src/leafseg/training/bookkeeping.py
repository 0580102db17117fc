"""What happens between the steps: progress bar, logging, validation with best-model selection on the val split,
checkpoints, the time budget's step count (decided at the end of the warm-up, revised in the first half), and the
end of a run. It calls the run's hooks (:class:`RunHooks`, implemented by :class:`leafseg.training.engine.Trainer`)
for what depends on the method: validating, exporting, checking the weights.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from omegaconf import DictConfig
from tqdm.auto import tqdm

from ..config_schema import MIN_WARMUP
from ..files import write_csv, write_json
from .budget import step_seconds, steps_in_budget, worth_revising
from .checkpoints import BEST, ScheduleAndEMA, save_checkpoint
from .clock import WallTime, combine_timings, timing_line
from .curves import plot_training_curves
from .optimisation import retarget_lr_schedule
from .run_log import say


class RunHooks(Protocol):
    """What the bookkeeping reads from the run it keeps, and the hooks it calls."""

    accelerator: Accelerator
    cfg: DictConfig
    run_dir: Path
    state: dict            # step, history, best, budget decision, wall time: saved with each checkpoint
    extra: ScheduleAndEMA  # LR schedule and EMA, saved with each checkpoint
    clock: WallTime
    has_val: bool
    description: str       # progress-bar label

    def validate(self) -> tuple[float, dict[str, float]]:
        """Validation Dice (mean over the val sources) and each source's."""

    def export(self, path: Path) -> None:
        """Save the inference pipeline (EMA weights) to ``path``."""

    def check_finite(self) -> None:
        """Raise when the weights are not finite (a checkpoint is only ever a good state)."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val_dice: float | None
    best_step: int | None
    history: list[dict]


class StepBookkeeping:
    """What every training loop does around its steps: the progress bar, an optional step-0 validation, logging,
    validation with best-model selection on the val split (main process), checkpoints, and the end of the run
    (model-best when there is no val split, training curves, tracker shutdown)."""

    def __init__(self, run: RunHooks):
        self.run, self.accelerator, self.tc, self.state = run, run.accelerator, run.cfg.train, run.state
        self.run_dir, self.extra, self.clock, self.has_val = run.run_dir, run.extra, run.clock, run.has_val
        state, self.first_step = self.state, int(run.state["step"])
        self.earlier_timings = list(state["wall_time"])  # of the processes this run was resumed from
        self.max_steps = int(self.tc.max_steps)
        self.budget_s = None if self.tc.time_budget_min is None else self.tc.time_budget_min * 60
        if self.budget_s is not None and state.get("budget_steps") is not None:  # decided before the resume
            self._set_max_steps(min(self.max_steps, int(state["budget_steps"])))
        self.t_start = time.time()
        self.progress = tqdm(total=self.max_steps, initial=int(state["step"]), desc=run.description,
                             disable=not self.accelerator.is_main_process)
        # seconds of each step since half-way through the warm-up (validations and checkpoints not counted), and
        # of each validation: what the time budget is decided and revised from
        self.step_times: list[float] = []
        self.validation_times: list[float] = []
        self._tick: float | None = None  # when the step now running began
        if self.tc.val_at_start and state["step"] == 0 and self.has_val:  # the untrained model, on the curve
            self._validate(0)
        if self.budget_s is not None:
            self._tick = time.perf_counter()

    def _set_max_steps(self, total: int) -> None:
        self.max_steps = total
        retarget_lr_schedule(self.extra.lr_scheduler, self.tc, total)

    def _elapsed(self) -> float:
        return sum(s["total_s"] for s in self.earlier_timings) + self.clock.elapsed()

    def _budget_count(self, step: int) -> tuple[int, float, float]:
        """(steps that fit the budget, seconds a step, seconds a validation) from the times so far, the same on
        every rank (the main process's)."""
        step_s = step_seconds(self.step_times)
        validation_s = statistics.mean(self.validation_times) if self.validation_times else 0.0
        decision = [steps_in_budget(self.budget_s, self._elapsed(), step, step_s, validation_s,
                                    int(self.tc.val_every) if self.has_val else None, int(self.tc.max_steps))]
        broadcast_object_list(decision)  # every rank stops at the main process's count
        return int(decision[0]), step_s, validation_s

    def _check_warmup_fits(self, step: int) -> None:
        """After :data:`MIN_WARMUP` steps: refuse a budget the LR warm-up cannot end inside (the count is decided
        at its end), before more of the budget is spent."""
        warmup, step_s = int(self.tc.warmup_steps), step_seconds(self.step_times)
        needed = [self._elapsed() + (warmup - step) * step_s]
        broadcast_object_list(needed)  # every rank stops, or none
        if needed[0] > self.budget_s:
            raise ValueError(
                f"train.time_budget_min={self.tc.time_budget_min:g}: the LR warm-up (train.warmup_steps={warmup}) "
                f"would end after {needed[0] / 60:.1f} min at {step_s:.3f} s a step on this machine, "
                f"and the step count is decided at its end; lower train.warmup_steps, raise the budget, or build on "
                f"a recipe made for a budget (base: cpu)")

    def _decide_budget(self, step: int) -> bool:
        """At the end of the warm-up: the step count that fits ``train.time_budget_min`` (see
        leafseg.training.budget). Returns whether this step was validated (to time a validation)."""
        validated = self.has_val
        if validated:
            self._validate(step)
        total, step_s, validation_s = self._budget_count(step)
        self._set_budget_steps(total)
        fits = "all of them fit" if total == int(self.tc.max_steps) else f"{total} of them fit"
        say(f"time budget {self.tc.time_budget_min:g} min: {self._elapsed() / 60:.1f} min spent, a step takes "
                   f"{step_s:.3f} s and a validation {validation_s:.1f} s; of train.max_steps {self.tc.max_steps} "
                   f"steps {fits}, the LR schedule ends at step {total}")
        return validated

    def _revise_budget(self, step: int) -> None:
        """At a validation in the first half of the decided schedule: the count again, from every step timed so
        far, kept when it moved by more than REVISE_TOLERANCE (a warm-up slowed by another job is corrected)."""
        if len(self.step_times) < MIN_WARMUP // 2:  # just resumed: fewer steps timed than the decision had
            return
        total, step_s, _ = self._budget_count(step)
        if worth_revising(self.max_steps, total):
            say(f"time budget revised at step {step}: a step takes {step_s:.3f} s (median of "
                       f"{len(self.step_times)}); the LR schedule now ends at step {total} instead of {self.max_steps}")
            self._set_budget_steps(total)

    def _set_budget_steps(self, total: int) -> None:
        self.state["budget_steps"] = total
        self._set_max_steps(total)
        self.progress.total = total
        self.progress.refresh()

    def _validate(self, step: int) -> None:
        accelerator, state = self.accelerator, self.state
        if accelerator.is_main_process:
            t = time.perf_counter()
            with self.clock.phase("validation"):
                val_dice, per_source = self.run.validate()
            self.validation_times.append(time.perf_counter() - t)
            by_source = {f"val_dice_{name}": value for name, value in per_source.items()} if len(per_source) > 1 else {}
            accelerator.log({"val_dice": val_dice, **by_source}, step=step)
            state["history"].append({"step": step, "val_dice": val_dice, **by_source})
            if state["best_val_dice"] is None or val_dice > state["best_val_dice"]:
                state["best_val_dice"], state["best_step"] = val_dice, step
                with self.clock.phase("checkpoints"):
                    self.run.export(self.run_dir / BEST)
            each = f" ({', '.join(f'{k} {v:.4f}' for k, v in per_source.items())})" if by_source else ""
            say(f"step {step}: val Dice {val_dice:.4f}{each} (best {state['best_val_dice']:.4f} "
                       f"at step {state['best_step']})")
        accelerator.wait_for_everyone()

    def after_step(self, step: int, losses: dict[str, torch.Tensor], extra_logs=None) -> None:
        """Call on every rank after optimiser step ``step`` (1-based). ``extra_logs`` is a callable giving more
        scalars to log (only called on logging steps, so it may synchronise with the device)."""
        validated, tc = False, self.tc
        self.state["step"] = step  # before any export: model-best's card names the step it holds
        if self.budget_s is not None:
            if self._tick is not None and (step > int(tc.warmup_steps) // 2 or "budget_steps" not in self.state):
                self.step_times.append(time.perf_counter() - self._tick)
            if "budget_steps" not in self.state:
                if step == MIN_WARMUP < int(tc.warmup_steps):
                    self._check_warmup_fits(step)
                if step == int(tc.warmup_steps):
                    validated = self._decide_budget(step)
                elif step == int(tc.warmup_steps) // 2:
                    self.step_times.clear()  # decided from the second half of the warm-up, at full LR
            elif self.has_val and step % int(tc.val_every) == 0 and step <= self.max_steps // 2:
                self._validate(step)
                validated = True
                self._revise_budget(step)
        last = step == self.max_steps
        self.progress.update(1)
        if step % int(tc.log_every) == 0 or last:
            logs = {k: self.accelerator.reduce(v.detach(), reduction="mean").item() for k, v in losses.items()}
            logs.update(extra_logs() if extra_logs else {})
            self.accelerator.log(logs, step=step)
            self.progress.set_postfix(loss=f"{logs['loss']:.4f}")
            self.state["history"].append({"step": step, **logs, "elapsed_s": round(time.time() - self.t_start, 1)})
        if self.has_val and (step % int(tc.val_every) == 0 or last) and not validated:
            self._validate(step)
        if step % int(tc.checkpoint_every) == 0 or last:
            self.run.check_finite()  # a checkpoint is only ever a good state
            self.state["wall_time"] = self.earlier_timings + [self.clock.summary((self.first_step, step))]
            with self.clock.phase("checkpoints"):
                save_checkpoint(self.accelerator, self.run_dir, self.state, self.run.export, self.extra)
                if self.accelerator.is_main_process:  # a plain-text record beside TensorBoard's
                    write_csv(self.state["history"], self.run_dir / "logs" / "history.csv")
        if self.budget_s is not None:
            self._tick = time.perf_counter()  # the next step's time starts here: validations are not in it

    def finish(self) -> TrainResult:
        self.progress.close()
        accelerator, state = self.accelerator, self.state
        if accelerator.is_main_process:
            if not self.has_val:
                self.run.export(self.run_dir / BEST)  # no val split: best = last
            if state["history"]:
                plot_training_curves(state["history"], self.run_dir / "logs" / "curves.png")
            segment = self.clock.summary((self.first_step, int(state["step"])))
            timings = combine_timings(self.earlier_timings + [segment])
            write_json(timings, self.run_dir / "logs" / "timings.json")
            say(timing_line(timings))
        accelerator.end_training()
        return TrainResult(self.run_dir, int(state["step"]), state["best_val_dice"], state["best_step"],
                           state["history"])

