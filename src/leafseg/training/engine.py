"""The training loop every method shares, as a :class:`Trainer` whose steps are named hooks (``load_data``,
``on_train_start``, ``train_step``, ``validate``, ``export``, ``check_finite``, ``on_train_end``) that a subclass may
override, as nnU-Net's trainer's are, and whose work around the steps is done by event handlers with one job each
(:mod:`leafseg.training.handlers`: progress, loss logging, validation and model selection, checkpoints, the stop on a
non-finite loss; :class:`leafseg.training.budget.TimeBudget`). The other modules it uses: ``run_setup`` (device,
precision, run folder), ``optimisation`` (schedules, EMA, the step after a loss), ``clock`` (wall time),
``checkpoints`` (atomic saves, exact resume).

A method (``leafseg.training.leaf``, ``leafseg.training.supervised``, ``leafseg.training.peers``) plugs in through
:class:`TrainingMethod`: it builds its networks and frozen targets from a :class:`RunContext` (what it needs of the
run, given as an argument), computes a batch's losses, validates, and names the inference pipeline to export.
Everything random in a step (batch order, flips, and whatever the method draws after them: t, eps) comes from
generators seeded by (seed, step, rank), so a resumed run continues exactly as an uninterrupted one, and each rank
reads its own shard of every global batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig

from .. import data as D
from ..config import flatten, to_container
from ..data.loader import StepSampler, TrainBatch, TrainSamples, dataset_weights, step_generator, train_loader
from ..models.weights import assert_finite
from ..pipelines.compilation import kernel_cache
from .budget import TimeBudget, planned_steps
from .checkpoints import BEST, ScheduleAndEMA, load_trainer_state, release_run_dir, save_pipeline
from .clock import WallTime
from .handlers import (Checkpointing, Handler, LossLogging, ProgressBar, StopOnNonFiniteLoss, Validation,
                       last_good_state)
from .model_card import model_card
from .optimisation import (ema_weights, eval_mode, make_ema, make_lr_scheduler, optimisation_step,
                           retarget_lr_schedule)
from .run_data import RunData, cache_dir, load_run_data
from .run_log import run_log, say
from .run_setup import start_run


def flip_codes(hflip: bool, vflip: bool) -> list[tuple[bool, bool]]:
    """The flip combinations a sample may be read in: (horizontal, vertical), identity first."""
    return [(h, v) for v in ((False, True) if vflip else (False,)) for h in ((False, True) if hflip else (False,))]


@dataclass(frozen=True)
class RunContext:
    """What a training method needs of the run it trains in, handed to :meth:`TrainingMethod.build`.

    Attributes:
        cfg: the run's configuration.
        data: the run's samples (train, val, sources, labels).
        accelerator: accelerate's ``Accelerator`` (device, autocast, main process).
        cache_dir: where the frozen targets' caches live.
        codes: the flip combinations a sample may be read in.
        augmentation: applied by the loader (a method computes targets for the samples it changed).
        colour_jitter: applied by the method to its training images after the flips and augmentation.
    """

    cfg: DictConfig
    data: RunData
    accelerator: Accelerator
    cache_dir: Path
    codes: list[tuple[bool, bool]]
    augmentation: D.SampleAugmentation
    colour_jitter: D.ColourJitter

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val_dice: float | None
    best_step: int | None
    history: list[dict]


class TrainingMethod(Protocol):
    """What a training method provides to :func:`run_training` (see leafseg.training.leaf for the LEAF one)."""

    tracker_name: str      # TensorBoard project name
    description: str       # progress-bar label

    def build(self, run: RunContext) -> torch.nn.Module:
        """Networks and frozen targets; returns the module whose trainable parameters are optimised. ``run`` is
        what the method may read of the run later too (its losses and validation use it)."""

    def ema_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """The part of the (unwrapped) trained module that EMA averages and the pipeline exports."""

    def compile_networks(self, model: torch.nn.Module) -> int:
        """``train.compile``: compile the networks of ``model`` (from :meth:`build`) in place with torch.compile;
        returns how many modules were compiled."""

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


class Trainer:
    """One training run of ``method``: the config, accelerate, the run folder and (after :meth:`load_data`) the
    loaded data, handed to the method as a :class:`RunContext` when it builds. :meth:`fit` calls the hooks in this
    order: ``load_data``, ``on_train_start`` (networks, optimiser, EMA, the resumed state), then ``train_step`` per step
    with the handlers calling ``validate``, ``export`` and ``check_finite``, and ``on_train_end``. A subclass
    overrides any of them, or :meth:`handlers` to add or drop a handler, and is passed as
    ``leafseg.train(cfg, trainer_class=...)``; the default ones keep the numerics of every release (the
    expected-slice and bit-exact resume tests).

    Args:
        method: the training method (builds networks and targets, computes losses, validates, exports).
        cfg: the run's configuration (``leafseg.load_config``).
        accelerator: accelerate's ``Accelerator`` of the run (from ``run_setup.start_run``).
        run_dir: the run folder (locked by ``start_run``).
        resume: continue from the folder's checkpoint.
    """

    def __init__(self, method: TrainingMethod, cfg: DictConfig, accelerator: Accelerator, run_dir: Path,
                 resume: bool = False):
        self.method, self.cfg, self.accelerator, self.run_dir, self.resume = method, cfg, accelerator, run_dir, resume
        self.clock = WallTime()
        self.description = method.description
        self.data: RunData | None = None

    # ------------------------------------------------------------------------- what the run is made of

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def codes(self) -> list[tuple[bool, bool]]:
        return flip_codes(self.cfg.data.hflip, self.cfg.data.vflip)

    @property
    def cache_dir(self) -> Path:
        return cache_dir(self.cfg, self.run_dir)

    @property
    def has_val(self) -> bool:
        return self.data.val is not None

    @cached_property
    def colour_jitter(self) -> D.ColourJitter:
        """Applied by each method to its training images after the flips and augmentation (identity when off)."""
        return D.ColourJitter.from_config(self.cfg.data.colour_jitter)

    @cached_property
    def augmentation(self) -> D.SampleAugmentation:
        """Applied by the data loader after the flips (``data.augment``; off: the flipped samples themselves)."""
        return D.SampleAugmentation.from_config(self.cfg.data.augment)

    def context(self) -> RunContext:
        """What the method is given to build from (after :meth:`load_data`)."""
        return RunContext(self.cfg, self.data, self.accelerator, self.cache_dir, self.codes, self.augmentation,
                          self.colour_jitter)

    def handlers(self) -> list[Handler]:
        """The handlers of the run, in the order they hear each event: the time budget first (it times the step
        and may validate), the progress bar, the stop on a non-finite loss, loss logging, validation, then
        checkpoints. A subclass may return another list."""
        validation = Validation()
        return [TimeBudget(validation), ProgressBar(), StopOnNonFiniteLoss(), LossLogging(), validation,
                Checkpointing()]

    def fire(self, event: str, *args) -> None:
        """Call ``event`` on every handler, in order."""
        for handler in self._handlers:
            getattr(handler, event)(self, *args)

    def set_max_steps(self, total: int) -> None:
        """End the run at step ``total``, the LR schedule following the curve it would have over that many steps
        (the time budget's decision)."""
        self.max_steps = total
        retarget_lr_schedule(self.lr_scheduler, self.cfg.train, total)

    # ------------------------------------------------------------------------------------------- the hooks

    def load_data(self) -> None:
        """The run's samples (decoded, or opened from the store), then what the run is about to do."""
        with self.clock.phase("data"):
            self.data = load_run_data(self.cfg, self.run_dir, self.accelerator)
        if self.accelerator.is_main_process:
            _announce(self.method, self)

    def on_train_start(self) -> None:
        """The method's networks and frozen targets, AdamW, the LR schedule, EMA, the state of a resumed run, and
        the trackers."""
        cfg, tc, accelerator = self.cfg, self.cfg.train, self.accelerator
        set_seed(int(cfg.run.seed))  # identical initialisation on every rank
        with self.clock.phase("frozen_targets"):
            model = self.method.build(self.context())
        if tc.compile:  # lazily: the first step compiles (inside the time budget, which counts from start-up)
            compiled = self.method.compile_networks(model)
            if accelerator.is_main_process:
                say(f"train.compile: {compiled} module(s) compiled by torch.compile on the first step (minutes on a "
                    f"small CPU; kernels kept in {kernel_cache()} for later runs)")
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=tc.lr, weight_decay=tc.weight_decay,
                                      betas=tuple(tc.adam_betas))
        self.lr_scheduler = make_lr_scheduler(optimizer, tc)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.base = accelerator.unwrap_model(self.model)
        self.averaged = self.method.ema_module(self.base)
        self.ema = make_ema(self.averaged, tc.ema, accelerator.device)
        self.extra = ScheduleAndEMA(self.lr_scheduler, self.ema)
        self.state = load_trainer_state(accelerator, self.run_dir, self.resume, self.extra)
        if self.ema is not None:
            self.ema.to(accelerator.device)
        if accelerator.is_main_process:
            flat = flatten(to_container(cfg))
            accelerator.init_trackers(self.method.tracker_name, config={
                k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()})
        self.split_sha = D.split_digest(Path(cfg.data.split_file or self.run_dir / "split.json"))

    def train_step(self, batch: TrainBatch, generator: torch.Generator
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """One optimiser step on ``batch``: the method's losses, then backward, clipping, AdamW, schedule and EMA.
        Returns the losses and the gradient norm before clipping (None without clipping)."""
        losses = self.method.losses(self.model, batch, generator)
        self.fire("losses_computed", losses)  # a handler may stop the run here, before the weights change
        grad_norm = optimisation_step(self.accelerator, losses["loss"], self.params, self.optimizer,
                                      self.lr_scheduler, self.cfg.train.grad_clip, self.ema, self.averaged)
        return losses, grad_norm

    def validate(self) -> tuple[float, dict[str, float]]:
        """Validation Dice with the EMA weights in eval mode: the mean over the val sources, and each source's."""
        with ema_weights(self.ema, self.averaged.parameters()), eval_mode(self.base), torch.no_grad():
            return source_means(self.method.validate(self.base), self.data.val_sources)

    def export(self, path: Path) -> None:
        """The inference pipeline with the EMA weights and its model card, to ``path`` (model-best, model-last)."""
        card = model_card(self.cfg, self.state, self.split_sha, "best" if path.name == BEST else "last")
        with ema_weights(self.ema, self.averaged.parameters()):
            save_pipeline(self.method.pipeline(self.base), path, card)  # refuses non-finite weights

    def check_finite(self) -> None:
        """Refuse to checkpoint non-finite weights, saying where the run can go on from."""
        assert_finite(self.base, f"the model at step {self.state['step']} (training stopped; "
                                 f"{last_good_state(self.run_dir)})")

    def after_step(self, losses: dict[str, torch.Tensor], grad_norm: torch.Tensor | None) -> None:
        """The handlers' turn after optimiser step ``state["step"]``: logging, validation, checkpoints, budget.
        The learning rate and gradient norm are read only on logging steps (they may synchronise the device)."""
        self.fire("step_done", losses, lambda: {"lr": self.lr_scheduler.get_last_lr()[0],
                                                **({} if grad_norm is None else {"grad_norm": float(grad_norm)})})

    def on_train_end(self, seen: list[int]) -> TrainResult:
        """The handlers' end (model-best without a val split, curves, timings); with ``train.log_samples``, what
        each rank read."""
        if self.cfg.train.log_samples:  # what each rank read and ended with: lets tests check sharding and sync
            _log_samples(self.run_dir, self.accelerator.process_index, seen, self.base)
        self.fire("finished")
        self.accelerator.end_training()
        state = self.state
        return TrainResult(self.run_dir, int(state["step"]), state["best_val_dice"], state["best_step"],
                           state["history"])

    # -------------------------------------------------------------------------------------------- the loop

    def fit(self) -> TrainResult:
        """Train to ``train.max_steps``, or as many steps as ``train.time_budget_min`` decides."""
        self.load_data()
        self.on_train_start()
        cfg, data, accelerator = self.cfg, self.data, self.accelerator
        rank, world, seed = accelerator.process_index, accelerator.num_processes, int(cfg.run.seed)
        step, seen, n_codes = int(self.state["step"]), [], len(self.codes)
        self.first_step, self.earlier_timings = step, list(self.state["wall_time"])  # of the processes resumed from
        self.max_steps = int(cfg.train.max_steps)
        self._handlers = self.handlers()
        self.fire("started")
        samples = TrainSamples(data.train, self.codes, self.augmentation, seed, rank, *self.method.row_files())
        sampler = StepSampler(len(data.train), int(cfg.train.batch_size), world, rank, seed, n_codes,
                              start_step=step, weights=sampling_weights(cfg, data))
        self.model.train()
        self.clock.first_step()
        batches = iter(train_loader(samples, sampler, cfg.data.num_workers))
        while step < self.max_steps:  # train.max_steps, or fewer where train.time_budget_min decides so
            self.fire("step_started")
            batch = next(batches)
            if batch.step != step:
                raise RuntimeError(f"data loader out of step: got step {batch.step}'s batch at step {step}")
            g, _ = step_generator(seed, step, rank, len(batch.indices), n_codes)  # past the codes, as drawn
            losses, grad_norm = self.train_step(batch, g)
            step += 1
            self.state["step"] = step  # before any export: model-best's card names the step it holds
            if cfg.train.log_samples:
                seen.extend(batch.indices.tolist())
            self.after_step(losses, grad_norm)
        del batches  # stops the workers
        return self.on_train_end(seen)


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



def run_training(method: TrainingMethod, cfg: DictConfig, resume: bool = False,
                 trainer_class: type[Trainer] = Trainer) -> TrainResult:
    """Train ``method`` on the config's data: AdamW, warm-up + ``train.lr_schedule``, grad clip, EMA, validation
    every ``val_every`` steps with the best model kept, checkpoints every ``checkpoint_every`` steps. The run
    folder is locked for the duration.

    Args:
        method: the training method (``LeafMethod``, ``SupervisedMethod``, a peer).
        cfg: the run's configuration (``leafseg.config.load_config``).
        resume: go on from the run folder's checkpoint.
        trainer_class: :class:`Trainer` or a subclass overriding its hooks.

    Returns:
        The run folder, the last step, the best val Dice and its step, and the logged history.
    """
    accelerator, run_dir = start_run(cfg, resume)
    try:
        with run_log(run_dir, accelerator.is_main_process):
            return trainer_class(method, cfg, accelerator, run_dir, resume).fit()
    finally:
        if accelerator.is_main_process:
            release_run_dir(run_dir)


def sampling_weights(cfg: DictConfig, data: RunData) -> torch.Tensor | None:
    """``data.sampling``: ``image`` (every training sample equally often, epoch by epoch; the authors') or
    ``dataset`` (each of several datasets equally often, whatever its size: a small centre is not outvoted).
    The value was checked by ``load_config`` (a ``Sampling`` choice), before any data was read."""
    if cfg.data.sampling == "image" or len(data.train_sources) < 2:
        return None
    return dataset_weights([n for _, n in data.train_sources])


def _announce(method: TrainingMethod, trainer: Trainer) -> None:
    """What the run is about to do, before the caches (which then say how long they will take)."""
    cfg, data, accelerator = trainer.cfg, trainer.data, trainer.accelerator
    tc, n_val = cfg.train, 0 if data.val is None else len(data.val)
    workers = cfg.data.num_workers
    on_disk = data.train.bytes() + (data.val.bytes() if data.val is not None else 0)
    say(f"{method.description}: {len(data.train)} train / {n_val} val samples at "
          f"{cfg.data.resolution}x{cfg.data.resolution}, steps {planned_steps(tc)} (batch {tc.batch_size} x "
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


def _where(accelerator: Accelerator) -> str:
    """Device and arithmetic of the run, e.g. "cuda:0 in bf16 autocast" or "cpu in fp32 (2 thread(s))"."""
    precision = "fp32" if accelerator.mixed_precision == "no" else f"{accelerator.mixed_precision} autocast"
    threads = f" ({torch.get_num_threads()} thread(s))" if accelerator.device.type == "cpu" else ""
    return f"{accelerator.device} in {precision}{threads}"


def _augmentations(trainer: Trainer) -> str:
    flips = [name for name, on in (("horizontal", trainer.cfg.data.hflip), ("vertical", trainer.cfg.data.vflip)) if on]
    sampling = ("each dataset equally often" if sampling_weights(trainer.cfg, trainer.data) is not None else
                "each image equally often")
    lateral = trainer.data.labels.lateral if trainer.data.labels is not None else []
    warning = ""
    if lateral and trainer.cfg.data.hflip:  # a mirrored chest X-ray shows the right lung where the left one was
        warning = (f" (warning: data.hflip mirrors images whose structures {lateral} are named by side: the "
                   "mirrored image keeps the old side's name; set data.hflip=false)")
    return (f"{' and '.join(flips) + ' flips' if flips else 'no flips'}{warning}, {trainer.augmentation}, "
            f"{trainer.colour_jitter}, {sampling}")


def _log_samples(run_dir: Path, rank: int, seen: list[int], base: torch.nn.Module) -> None:
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs" / f"samples-rank{rank}.json").write_text(json.dumps(seen))
    torch.save({k: v.detach().cpu() for k, v in base.state_dict().items()},
               run_dir / "logs" / f"final-weights-rank{rank}.pt")
