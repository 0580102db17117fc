"""What happens around the training steps, as event handlers registered on the engine (MONAI's engines and
nnU-Net's ``on_*`` hooks work the same way): each handler has one job and hears the engine's events in the order
the handlers are listed (:meth:`leafseg.training.engine.Trainer.handlers`).

The events: ``started`` (the state is loaded, before the first step), ``step_started`` (before a batch is read),
``losses_computed`` (before backward: the losses of the step), ``step_done`` (after the optimiser step; the engine's
``state["step"]`` is the step just taken) and ``finished``. The time budget's handler lives with its arithmetic in
:mod:`leafseg.training.budget`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..files import write_csv, write_json
from .checkpoints import BEST, CHECKPOINT, save_checkpoint
from .clock import combine_timings, timing_line
from .curves import plot_training_curves
from .run_log import say

if TYPE_CHECKING:
    from .engine import Trainer


class Handler:
    """One job around the steps; every event is a no-op unless overridden."""

    def started(self, engine: Trainer) -> None:
        pass

    def step_started(self, engine: Trainer) -> None:
        pass

    def losses_computed(self, engine: Trainer, losses: dict[str, torch.Tensor]) -> None:
        pass

    def step_done(self, engine: Trainer, losses: dict[str, torch.Tensor], extra_logs) -> None:
        pass

    def finished(self, engine: Trainer) -> None:
        pass


def is_last(engine: Trainer) -> bool:
    return engine.state["step"] == engine.max_steps


class StopOnNonFiniteLoss(Handler):
    """Stop before a non-finite loss reaches the weights, saying where the run can go on from."""

    def losses_computed(self, engine: Trainer, losses: dict[str, torch.Tensor]) -> None:
        if torch.isfinite(losses["loss"].detach()).all():
            return
        has_checkpoint = (engine.run_dir / CHECKPOINT / "trainer_state.json").is_file()
        raise FloatingPointError(
            f"non-finite training loss at step {engine.state['step'] + 1} (lr "
            f"{engine.lr_scheduler.get_last_lr()[0]:.3g}): training stopped; {last_good_state(engine.run_dir)} - "
            + ("lower train.lr and start again, or resume from it" if has_checkpoint else
               "lower train.lr and start again in a new run folder"))


class ProgressBar(Handler):
    """The progress bar (main process): one tick a step, closed at the end."""

    def started(self, engine: Trainer) -> None:
        engine.progress = tqdm(total=engine.max_steps, initial=int(engine.state["step"]), desc=engine.description,
                               disable=not engine.accelerator.is_main_process)

    def step_done(self, engine: Trainer, losses, extra_logs) -> None:
        engine.progress.update(1)

    def finished(self, engine: Trainer) -> None:
        engine.progress.close()


class LossLogging(Handler):
    """Every ``train.log_every`` steps and at the last: the losses (mean over ranks) and the extra scalars to the
    trackers, the progress bar and the history; at the end, the training curves and where the wall time went."""

    def started(self, engine: Trainer) -> None:
        self.t_start = time.time()

    def step_done(self, engine: Trainer, losses, extra_logs) -> None:
        step = engine.state["step"]
        if step % int(engine.cfg.train.log_every) and not is_last(engine):
            return
        logs = {k: engine.accelerator.reduce(v.detach(), reduction="mean").item() for k, v in losses.items()}
        logs.update(extra_logs() if extra_logs else {})
        engine.accelerator.log(logs, step=step)
        engine.progress.set_postfix(loss=f"{logs['loss']:.4f}")
        engine.state["history"].append({"step": step, **logs, "elapsed_s": round(time.time() - self.t_start, 1)})

    def finished(self, engine: Trainer) -> None:
        if not engine.accelerator.is_main_process:
            return
        if engine.state["history"]:
            plot_training_curves(engine.state["history"], engine.run_dir / "logs" / "curves.png")
        segment = engine.clock.summary((engine.first_step, int(engine.state["step"])))
        timings = combine_timings(engine.earlier_timings + [segment])
        write_json(timings, engine.run_dir / "logs" / "timings.json")
        say(timing_line(timings))


class Validation(Handler):
    """Validation Dice every ``train.val_every`` steps and at the last (at step 0 too with
    ``train.val_at_start``), on the main process, with model-best exported whenever it improves; without a val
    split, model-best is the last model. :meth:`run` validates now (the time budget times a validation with it)."""

    def __init__(self):
        self.times: list[float] = []  # seconds of each validation
        self.last_step: int | None = None

    def started(self, engine: Trainer) -> None:
        if engine.cfg.train.val_at_start and engine.state["step"] == 0 and engine.has_val:
            self.run(engine, 0)

    def run(self, engine: Trainer, step: int) -> None:
        accelerator, state = engine.accelerator, engine.state
        if accelerator.is_main_process:
            t = time.perf_counter()
            with engine.clock.phase("validation"):
                val_dice, per_source = engine.validate()
            self.times.append(time.perf_counter() - t)
            by_source = {f"val_dice_{name}": value for name, value in per_source.items()} if len(per_source) > 1 else {}
            accelerator.log({"val_dice": val_dice, **by_source}, step=step)
            state["history"].append({"step": step, "val_dice": val_dice, **by_source})
            if state["best_val_dice"] is None or val_dice > state["best_val_dice"]:
                state["best_val_dice"], state["best_step"] = val_dice, step
                with engine.clock.phase("checkpoints"):
                    engine.export(engine.run_dir / BEST)
            each = f" ({', '.join(f'{k} {v:.4f}' for k, v in per_source.items())})" if by_source else ""
            say(f"step {step}: val Dice {val_dice:.4f}{each} (best {state['best_val_dice']:.4f} "
                f"at step {state['best_step']})")
        self.last_step = step
        accelerator.wait_for_everyone()

    def step_done(self, engine: Trainer, losses, extra_logs) -> None:
        step = engine.state["step"]
        due = step % int(engine.cfg.train.val_every) == 0 or is_last(engine)
        if engine.has_val and due and self.last_step != step:
            self.run(engine, step)

    def finished(self, engine: Trainer) -> None:
        if engine.accelerator.is_main_process and not engine.has_val:
            engine.export(engine.run_dir / BEST)  # no val split: best = last


class Checkpointing(Handler):
    """Every ``train.checkpoint_every`` steps and at the last: weights checked finite, then the checkpoint (with
    model-last and the wall time so far) and ``logs/history.csv``, atomically."""

    def step_done(self, engine: Trainer, losses, extra_logs) -> None:
        step = engine.state["step"]
        if step % int(engine.cfg.train.checkpoint_every) and not is_last(engine):
            return
        engine.check_finite()  # a checkpoint is only ever a good state
        engine.state["wall_time"] = engine.earlier_timings + [engine.clock.summary((engine.first_step, step))]
        with engine.clock.phase("checkpoints"):
            save_checkpoint(engine.accelerator, engine.run_dir, engine.state, engine.export, engine.extra)
            if engine.accelerator.is_main_process:  # a plain-text record beside TensorBoard's
                write_csv(engine.state["history"], engine.run_dir / "logs" / "history.csv")


def last_good_state(run_dir: Path) -> str:
    """Where a stopped run can go on from: its checkpoint (and the step it holds) or, before the first one, that
    there is none."""
    state = run_dir / CHECKPOINT / "trainer_state.json"
    try:
        return f"the last good state is {run_dir / CHECKPOINT} (step {json.loads(state.read_text())['step']})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"no checkpoint was written yet ({run_dir / CHECKPOINT} does not exist)"
