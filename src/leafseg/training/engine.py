"""The training engine every method shares: run folder, seeded batches, optimiser with warm-up and schedule, EMA,
accelerate (one CPU, one GPU or ``accelerate launch --num_processes N``), validation bookkeeping with selection on
the val split, atomic checkpoints and exact resume.

A method (``leafseg.training.leaf``, ``leafseg.training.supervised``) plugs in through :class:`TrainingMethod`:
it builds its networks and frozen targets, computes a batch's losses, validates, and names the inference pipeline
to export. Everything random in a step (batch order, flips, and whatever the method draws after them: t, eps) comes
from generators seeded by (seed, step, rank), so a resumed run continues exactly as an uninterrupted one, and each
rank reads its own shard of every global batch.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from tqdm.auto import tqdm

from .. import data as D
from ..config import flatten, to_container
from ..data.loader import (StepSampler, TrainBatch, TrainSamples, dataset_weights, step_generator,
                           train_loader)
from ..files import write_csv, write_json
from ..models.weights import assert_finite
from .budget import (MIN_WARMUP, check_budget_config, check_train_numbers, step_seconds, steps_in_budget,
                     worth_revising)
from .checkpoints import (BEST, CHECKPOINT, ScheduleAndEMA, check_resume_config, load_trainer_state, lock_run_dir,
                          recover_checkpoint, release_run_dir, save_checkpoint, save_pipeline, save_run_config)
from .curves import plot_training_curves
from .model_card import model_card
from .run_data import RunData, cache_dir, load_run_data
from .run_log import run_log, say


# ------------------------------------------------------------------------------------------------ randomness

def flip_codes(hflip: bool, vflip: bool) -> list[tuple[bool, bool]]:
    return [(h, v) for v in ((False, True) if vflip else (False,)) for h in ((False, True) if hflip else (False,))]


# ------------------------------------------------------------------------------------------- run and data

def use_cuda(device: str) -> bool:
    """Whether training runs on CUDA, per ``run.device``: auto (CUDA when visible), cpu (even on a GPU machine), or
    cuda (an error when no GPU is visible, instead of quietly running on the CPU)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"run.device must be auto, cpu or cuda, got {device!r} (a GPU index is chosen with "
                         "CUDA_VISIBLE_DEVICES or, for several, accelerate launch)")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device=cuda but torch sees no CUDA device (CPU build of torch, or "
                         "CUDA_VISIBLE_DEVICES empty); use run.device=auto or cpu")
    return device != "cpu" and torch.cuda.is_available()


def resolve_mixed_precision(value: str | bool, cuda: bool | None = None) -> str:
    """``train.mixed_precision``; ``auto`` is bf16 when training on a CUDA GPU that supports it (``cuda`` None:
    whenever one is visible), fp32 elsewhere."""
    if value is False:  # YAML reads an unquoted `no` as false
        value = "no"
    if value == "auto":
        cuda = torch.cuda.is_available() if cuda is None else cuda
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    if value not in ("no", "bf16", "fp16"):
        raise ValueError(f"train.mixed_precision must be auto, no, bf16 or fp16, got {value!r}")
    return value


def fresh_accelerator_state() -> None:
    """accelerate keeps one device and precision per process: a second Accelerator asking for another precision
    or for the CPU is refused, and one asking for CUDA after a CPU run silently stays on the CPU. A second training
    in the same process (a notebook, the test suite, a sweep) starts from a clean state, unless ranks are launched
    (torchrun/accelerate launch), whose process group that state holds. Private accelerate API, hence the guard."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    from accelerate.state import AcceleratorState, GradientState

    if hasattr(AcceleratorState, "_reset_state") and hasattr(GradientState, "_reset_state"):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def start_run(cfg: DictConfig, resume: bool) -> tuple[Accelerator, Path]:
    """Accelerator, run folder (locked for this run) and config.yaml. Refuses, before writing anything, a config
    with unset keys, a folder another training holds, and a folder that holds a run unless resuming."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"config value(s) not set: {', '.join(missing)} (give them as key=value or in the config)")
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as err:  # e.g. paper.yaml's ${oc.env:LEAFSEG_PRETRAINED} with it unset
        raise ValueError(f"config value {err.full_key} cannot be resolved: {str(err.msg).splitlines()[0]} (set "
                         f"the environment variable it names, or give {err.full_key}=... as key=value)") from None
    tc = cfg.train
    check_train_numbers(tc)
    check_budget_config(tc)
    if cfg.data.get("sampling", "image") not in SAMPLING:  # before any decoding or caching
        raise ValueError(f"data.sampling must be one of {SAMPLING}, got {cfg.data.sampling!r}")
    run_dir = Path(cfg.run.output_dir)
    if tc.num_threads:
        torch.set_num_threads(int(tc.num_threads))
    cuda = use_cuda(str(cfg.run.get("device", "auto")))
    fresh_accelerator_state()
    accelerator = Accelerator(
        # cpu=True on machines without CUDA lets `accelerate launch --multi_gpu --num_processes N` (torchrun) run N
        # CPU processes over gloo instead of silently falling back to N independent single-process runs.
        cpu=not cuda,
        mixed_precision=resolve_mixed_precision(tc.mixed_precision, cuda), log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_run_dir(run_dir)
        recover_checkpoint(run_dir)
    accelerator.wait_for_everyone()
    try:  # checked on every rank: no rank waits for one that stopped
        if (run_dir / CHECKPOINT).exists() and not resume:
            raise FileExistsError(f"{run_dir} already holds a training run; pass --resume to continue it, "
                                  "or choose another run.output_dir")
        notes = check_resume_config(run_dir, cfg) if resume else []
    except (FileExistsError, ValueError):
        release_run_dir(run_dir)
        raise
    if accelerator.is_main_process:
        if notes:  # what the resumed run changed, said before the run's own log opens
            with run_log(run_dir):
                for note in notes:
                    say(note)
        save_run_config(run_dir, cfg)
    accelerator.wait_for_everyone()
    return accelerator, run_dir


# ------------------------------------------------------------------------------------- optimisation, EMA

def make_lr_scheduler(optimizer: torch.optim.Optimizer, tc: DictConfig, total: int | None = None):
    """diffusers' schedule ``train.lr_schedule`` with ``train.warmup_steps`` linear warm-up over ``total`` steps
    (default ``train.max_steps``)."""
    names = ("constant_with_warmup", "cosine", "linear")
    if tc.lr_schedule not in names:
        raise ValueError(f"train.lr_schedule must be one of {names}, got {tc.lr_schedule!r}")
    return get_scheduler(tc.lr_schedule, optimizer, num_warmup_steps=int(tc.warmup_steps),
                         num_training_steps=int(tc.max_steps if total is None else total))


def retarget_lr_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, tc: DictConfig, total: int) -> None:
    """Make ``scheduler`` (from :func:`make_lr_scheduler`) follow the curve it would have over ``total`` steps, in
    place: the step it is at and the LR it set stay, the next step reads the new curve (train.time_budget_min). The
    new curve's function comes from a scheduler on a throw-away optimiser, so the real one is not touched."""
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    curve = make_lr_scheduler(dummy, tc, total).lr_lambdas[0]
    scheduler.lr_lambdas = [curve] * len(scheduler.optimizer.param_groups)


def make_ema(model: torch.nn.Module, ec: DictConfig, device) -> EMAModel | None:
    """diffusers EMAModel of ``model`` per config section ``train.ema`` (None when disabled). ``warmup: false`` is
    EMAModel's default form, decay = min(decay, (1 + step) / (10 + step)); ``warmup: true`` the warm-up form."""
    if not ec.enabled:
        return None
    ema = EMAModel(model.parameters(), decay=float(ec.decay), use_ema_warmup=bool(ec.warmup), power=float(ec.power),
                   model_cls=type(model), model_config=model.config)
    ema.to(device)
    return ema


@contextmanager
def ema_weights(ema: EMAModel | None, parameters):
    """Swap the EMA weights in (validation, export) and the trained ones back afterwards; no-op without EMA."""
    if ema is None:
        yield
        return
    params = list(parameters)
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


@contextmanager
def eval_mode(module: torch.nn.Module):
    """module.eval() for the duration, back to train mode afterwards."""
    module.eval()
    try:
        yield
    finally:
        module.train()


# ------------------------------------------------------------------------------------------------ wall time

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


# ------------------------------------------------------------------------------------------------ checkpoints


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

    def __init__(self, accelerator: Accelerator, cfg: DictConfig, state: dict, run_dir: Path, validate, export,
                 has_val: bool, desc: str, extra: ScheduleAndEMA, check_finite, clock: WallTime):
        self.accelerator, self.tc, self.state, self.run_dir, self.extra = accelerator, cfg.train, state, run_dir, extra
        self.check_finite, self.clock, self.first_step = check_finite, clock, int(state["step"])
        self.earlier_timings = list(state["wall_time"])  # of the processes this run was resumed from
        self.validate, self.export, self.has_val = validate, export, has_val
        self.max_steps = int(self.tc.max_steps)
        self.budget_s = None if self.tc.get("time_budget_min") is None else float(self.tc.time_budget_min) * 60
        if self.budget_s is not None and state.get("budget_steps") is not None:  # decided before the resume
            self._set_max_steps(min(self.max_steps, int(state["budget_steps"])))
        self.t_start = time.time()
        self.progress = tqdm(total=self.max_steps, initial=int(state["step"]), desc=desc,
                             disable=not accelerator.is_main_process)
        # seconds of each step since half-way through the warm-up (validations and checkpoints not counted), and
        # of each validation: what the time budget is decided and revised from
        self.step_times: list[float] = []
        self.validation_times: list[float] = []
        self._tick: float | None = None  # when the step now running began
        if self.tc.get("val_at_start") and state["step"] == 0 and has_val:  # the untrained model, on the curve
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
                f"train.time_budget_min={self.tc.time_budget_min}: the LR warm-up (train.warmup_steps={warmup}) would "
                f"end after {needed[0] / 60:.1f} min at {step_s:.3f} s a step on this machine, "
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
        say(f"time budget {self.tc.time_budget_min} min: {self._elapsed() / 60:.1f} min spent, a step takes "
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
                val_dice, per_source = self.validate()
            self.validation_times.append(time.perf_counter() - t)
            by_source = {f"val_dice_{name}": value for name, value in per_source.items()} if len(per_source) > 1 else {}
            accelerator.log({"val_dice": val_dice, **by_source}, step=step)
            state["history"].append({"step": step, "val_dice": val_dice, **by_source})
            if state["best_val_dice"] is None or val_dice > state["best_val_dice"]:
                state["best_val_dice"], state["best_step"] = val_dice, step
                with self.clock.phase("checkpoints"):
                    self.export(self.run_dir / BEST)
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
            self.check_finite()  # a checkpoint is only ever a good state
            self.state["wall_time"] = self.earlier_timings + [self.clock.summary((self.first_step, step))]
            with self.clock.phase("checkpoints"):
                save_checkpoint(self.accelerator, self.run_dir, self.state, self.export, self.extra)
                if self.accelerator.is_main_process:  # a plain-text record beside TensorBoard's
                    write_csv(self.state["history"], self.run_dir / "logs" / "history.csv")
        if self.budget_s is not None:
            self._tick = time.perf_counter()  # the next step's time starts here: validations are not in it

    def finish(self) -> TrainResult:
        self.progress.close()
        accelerator, state = self.accelerator, self.state
        if accelerator.is_main_process:
            if not self.has_val:
                self.export(self.run_dir / BEST)  # no val split: best = last
            if state["history"]:
                plot_training_curves(state["history"], self.run_dir / "logs" / "curves.png")
            segment = self.clock.summary((self.first_step, int(state["step"])))
            timings = combine_timings(self.earlier_timings + [segment])
            write_json(timings, self.run_dir / "logs" / "timings.json")
            say(_timing_line(timings))
        accelerator.end_training()
        return TrainResult(self.run_dir, int(state["step"]), state["best_val_dice"], state["best_step"],
                           state["history"])


# ------------------------------------------------------------------------------------------------- the loop

class TrainingMethod(Protocol):
    """What a training method provides to :func:`run_training` (see leafseg.training.leaf for the LEAF one)."""

    tracker_name: str      # TensorBoard project name
    description: str       # progress-bar label

    def build(self, trainer: Trainer) -> torch.nn.Module:
        """Networks and frozen targets; returns the module whose trainable parameters are optimised."""

    def ema_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """The part of the (unwrapped) trained module that EMA averages and the pipeline exports."""

    def losses(self, model: torch.nn.Module, batch: TrainBatch, generator: torch.Generator
               ) -> dict[str, torch.Tensor]:
        """Loss terms of one batch (``"loss"`` is optimised); ``model`` is the accelerate-wrapped module;
        ``generator`` is the step's, past the flip codes (the method draws what else it needs from it, in a fixed
        order)."""

    def row_files(self) -> tuple:
        """(mask latents, teacher tokens) row files the loader reads with each batch, or None for each."""

    def validate(self, model: torch.nn.Module) -> list[float]:
        """Per-image Dice on the val samples, in store order (called in eval mode, EMA weights swapped in, main
        process)."""

    def pipeline(self, model: torch.nn.Module):
        """The inference pipeline of the (unwrapped) module, for export."""


@dataclass
class Trainer:
    """What a method sees while it builds: the config, accelerate, the run folder and the loaded data."""

    cfg: DictConfig
    accelerator: Accelerator
    run_dir: Path
    data: RunData

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def codes(self) -> list[tuple[bool, bool]]:
        return flip_codes(self.cfg.data.hflip, self.cfg.data.vflip)

    @property
    def cache_dir(self) -> Path:
        return cache_dir(self.cfg, self.run_dir)

    @cached_property
    def colour_jitter(self) -> D.ColourJitter:
        """Applied by each method to its training images after the flips and augmentation (identity when off)."""
        return D.ColourJitter.from_config(self.cfg.data.get("colour_jitter"))

    @cached_property
    def augmentation(self) -> D.SampleAugmentation:
        """Applied by the data loader after the flips (``data.augment``; off: the flipped samples themselves)."""
        return D.SampleAugmentation.from_config(self.cfg.data.get("augment"))


def source_means(scores: list[float], val_sources: list[tuple[str, int]]) -> tuple[float, dict[str, float]]:
    """Validation Dice of per-image ``scores``: the mean over the sources of each source's mean (with one source,
    the plain mean), and each source's mean."""
    per_source, start = {}, 0
    for name, count in val_sources:
        if count:
            per_source[name] = float(np.mean(scores[start:start + count]))
        start += count
    if start != len(scores):
        raise RuntimeError(f"validation scored {len(scores)} samples, the val sources hold {start}")
    return float(np.mean(list(per_source.values()))), per_source


def run_training(method: TrainingMethod, cfg: DictConfig, resume: bool = False) -> TrainResult:
    """Train ``method`` on the config's data: AdamW, warm-up + ``train.lr_schedule``, grad clip, EMA, validation
    every ``val_every`` steps with the best model kept, checkpoints every ``checkpoint_every`` steps. The run
    folder is locked for the duration."""
    accelerator, run_dir = start_run(cfg, resume)
    try:
        with run_log(run_dir, accelerator.is_main_process):
            return _train(method, cfg, resume, accelerator, run_dir)
    finally:
        if accelerator.is_main_process:
            release_run_dir(run_dir)


def _train(method: TrainingMethod, cfg: DictConfig, resume: bool, accelerator: Accelerator, run_dir: Path
           ) -> TrainResult:
    # Kept in one piece (~65 lines) on purpose: set-up, then the step loop, read top to bottom as the algorithm;
    # everything that is not the loop itself (bookkeeping, checkpoints, EMA state) lives in the helpers it calls.
    tc, clock = cfg.train, WallTime()
    with clock.phase("data"):
        trainer = Trainer(cfg, accelerator, run_dir, load_run_data(cfg, run_dir, accelerator))
    if accelerator.is_main_process:
        _announce(method, trainer)
    set_seed(int(cfg.run.seed))  # identical initialisation on every rank
    with clock.phase("frozen_targets"):
        model = method.build(trainer)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, betas=tuple(tc.adam_betas))
    lr_scheduler = make_lr_scheduler(optimizer, tc)
    model, optimizer = accelerator.prepare(model, optimizer)
    base = accelerator.unwrap_model(model)
    averaged = method.ema_module(base)
    ema = make_ema(averaged, tc.ema, accelerator.device)
    extra = ScheduleAndEMA(lr_scheduler, ema)
    state = load_trainer_state(accelerator, run_dir, resume, extra)
    if ema is not None:
        ema.to(accelerator.device)
    if accelerator.is_main_process:
        flat = flatten(to_container(cfg))
        accelerator.init_trackers(method.tracker_name, config={
            k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()})
    split_sha = D.split_digest(Path(cfg.data.split_file or run_dir / "split.json"))

    def export(path: Path) -> None:
        card = model_card(cfg, state, split_sha, "best" if path.name == BEST else "last")
        with ema_weights(ema, averaged.parameters()):
            save_pipeline(method.pipeline(base), path, card)  # refuses non-finite weights

    def validate() -> tuple[float, dict[str, float]]:
        with ema_weights(ema, averaged.parameters()), eval_mode(base), torch.no_grad():
            return source_means(method.validate(base), trainer.data.val_sources)

    data, rank, world = trainer.data, accelerator.process_index, accelerator.num_processes
    bs, seed, n_codes = int(tc.batch_size), int(cfg.run.seed), len(trainer.codes)
    step, seen = int(state["step"]), []
    book = StepBookkeeping(accelerator, cfg, state, run_dir, validate, export, data.val is not None,
                           method.description, extra,
                           lambda: assert_finite(base, f"the model at step {book.state['step']} (training stopped; "
                                                       f"{last_good_state(run_dir)})"),
                           clock)
    samples = TrainSamples(data.train, trainer.codes, trainer.augmentation, seed, rank, *method.row_files())
    sampler = StepSampler(len(data.train), bs, world, rank, seed, n_codes, start_step=step,
                          weights=sampling_weights(cfg, data))
    model.train()
    clock.first_step()
    batches = iter(train_loader(samples, sampler, int(cfg.data.get("num_workers", 0))))
    while step < book.max_steps:  # train.max_steps, or fewer where train.time_budget_min decides so
        batch = next(batches)
        if batch.step != step:
            raise RuntimeError(f"data loader out of step: got step {batch.step}'s batch at step {step}")
        g, _ = step_generator(seed, step, rank, len(batch.indices), n_codes)  # past the codes, as the sampler drew
        losses = method.losses(model, batch, g)
        if not torch.isfinite(losses["loss"].detach()).all():
            raise FloatingPointError(
                f"non-finite training loss at step {step + 1} (lr {lr_scheduler.get_last_lr()[0]:.3g}): training "
                f"stopped; {last_good_state(run_dir)} - lower train.lr and start again, or resume from it")
        grad_norm = optimisation_step(accelerator, losses["loss"], params, optimizer, lr_scheduler, tc.grad_clip,
                                      ema, averaged)
        step += 1
        if tc.log_samples:
            seen.extend(batch.indices.tolist())
        book.after_step(step, losses, lambda gn=grad_norm: {"lr": lr_scheduler.get_last_lr()[0],
                                                            **({} if gn is None else {"grad_norm": float(gn)})})
    del batches  # stops the workers
    if tc.log_samples:  # what each rank read and ended with: lets tests check sharding and replica sync
        _log_samples(run_dir, rank, seen, base)
    return book.finish()


def optimisation_step(accelerator: Accelerator, loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer,
                      lr_scheduler, grad_clip: float | None, ema: EMAModel | None,
                      averaged: torch.nn.Module) -> torch.Tensor | None:
    """What follows one step's loss: backward, gradient clipping (``grad_clip``; off when 0/None), AdamW, LR schedule,
    EMA of ``averaged``. Returns the gradient norm before clipping (None without clipping). One function, so that
    benchmarks/train_speed.py times exactly the step this loop takes."""
    accelerator.backward(loss)
    grad_norm = accelerator.clip_grad_norm_(params, grad_clip) if grad_clip else None
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.step(averaged.parameters())
    return grad_norm


def last_good_state(run_dir: Path) -> str:
    """Where a stopped run can go on from: its checkpoint (and the step it holds) or, before the first one, that
    there is none."""
    state = run_dir / CHECKPOINT / "trainer_state.json"
    try:
        return f"the last good state is {run_dir / CHECKPOINT} (step {json.loads(state.read_text())['step']})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"no checkpoint was written yet ({run_dir / CHECKPOINT} does not exist)"


SAMPLING = ("image", "dataset")


def sampling_weights(cfg: DictConfig, data: RunData) -> torch.Tensor | None:
    """``data.sampling``: ``image`` (every training sample equally often, epoch by epoch; the authors') or
    ``dataset`` (each of several datasets equally often, whatever its size: a small centre is not outvoted).
    The value was checked by :func:`start_run`, before any data was read."""
    if cfg.data.get("sampling", "image") == "image" or len(data.train_sources) < 2:
        return None
    return dataset_weights([n for _, n in data.train_sources])


def _announce(method: TrainingMethod, trainer: Trainer) -> None:
    """What the run is about to do, before the caches (which then say how long they will take)."""
    cfg, data, accelerator = trainer.cfg, trainer.data, trainer.accelerator
    tc, n_val = cfg.train, 0 if data.val is None else len(data.val)
    workers = int(cfg.data.get("num_workers", 0))
    on_disk = data.train.bytes() + (data.val.bytes() if data.val is not None else 0)
    say(f"{method.description}: {len(data.train)} train / {n_val} val samples at "
          f"{cfg.data.resolution}x{cfg.data.resolution}, steps {_steps(tc)} (batch {tc.batch_size} x "
          f"{accelerator.num_processes} process(es)) on {_where(accelerator)}, {_augmentations(trainer)}, "
          f"validation every {tc.val_every}, into {trainer.run_dir}")
    say(f"data: samples read from {trainer.cache_dir} ({on_disk / 2**20:.1f} MiB on disk, {data.first_pass_s:.1f} s "
          f"to decode or open), {'in the training process' if not workers else f'{workers} loader worker(s)'}; "
          "frozen targets are computed first (each says how long it will take)")
    empty = sum(1 for f in data.train.foreground if not f)
    val_empty = 0 if data.val is None else sum(1 for f in data.val.foreground if not f)
    say(f"masks: {empty} of {len(data.train)} train and {val_empty} of {n_val} val samples are empty at "
          f"{cfg.data.resolution}x{cfg.data.resolution} (frames without an object: they teach the model to leave such "
          f"frames empty)")


def _steps(tc: DictConfig) -> str:
    if tc.get("time_budget_min") is None:
        return str(tc.max_steps)
    return (f"{tc.max_steps} or as many as fit in train.time_budget_min={tc.time_budget_min} min (decided at the end "
            f"of the {tc.warmup_steps}-step warm-up)")


def _timing_line(t: dict) -> str:
    return (f"wall {t['total_s'] / 60:.1f} min (after imports): data {t['data_s']:.0f} s, frozen targets "
            f"{t['frozen_targets_s']:.0f} s, first step at {t['before_first_step_s']:.0f} s; steps "
            f"{t['steps_s'] / 60:.1f} min, {t['validations']} validation(s) {t['validation_s']:.0f} s, "
            f"checkpoints and exports {t['checkpoints_s']:.0f} s")


def _where(accelerator: Accelerator) -> str:
    """Device and arithmetic of the run, e.g. "cuda:0 in bf16 autocast" or "cpu in fp32 (2 thread(s))"."""
    precision = "fp32" if accelerator.mixed_precision == "no" else f"{accelerator.mixed_precision} autocast"
    threads = f" ({torch.get_num_threads()} thread(s))" if accelerator.device.type == "cpu" else ""
    return f"{accelerator.device} in {precision}{threads}"


def _augmentations(trainer: Trainer) -> str:
    flips = [name for name, on in (("horizontal", trainer.cfg.data.hflip), ("vertical", trainer.cfg.data.vflip)) if on]
    sampling = ("each dataset equally often" if sampling_weights(trainer.cfg, trainer.data) is not None else
                "each image equally often")
    return (f"{' and '.join(flips) + ' flips' if flips else 'no flips'}, {trainer.augmentation}, "
            f"{trainer.colour_jitter}, {sampling}")


def _log_samples(run_dir: Path, rank: int, seen: list[int], base: torch.nn.Module) -> None:
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs" / f"samples-rank{rank}.json").write_text(json.dumps(seen))
    torch.save({k: v.detach().cpu() for k, v in base.state_dict().items()},
               run_dir / "logs" / f"final-weights-rank{rank}.pt")
