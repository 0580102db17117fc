"""Checkpoints and run folders: atomic checkpoint swaps (and finishing one that was interrupted), exact resume
from state that loads without running code, the model export with its card, and the lock that keeps two trainings
out of one folder."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors.torch import load_file, save_file

from ..config import flatten, read_yaml, to_container
from ..config_schema import RETIRED_KEYS, resumable_keys, retired_key_error
from ..files import atomic_dir, replace_dir, write_error, write_json, write_text
from ..models.weights import assert_finite
from .run_log import say

CHECKPOINT = "checkpoint-last"
BEST, LAST = "model-best", "model-last"


_LOCKS: dict[Path, object] = {}  # open lock files, held until the process ends


def lock_run_dir(run_dir: Path) -> None:
    """An exclusive lock on ``run_dir/.lock`` for this process: a second training into the same folder stops at
    once instead of sharing its checkpoints."""
    try:
        import fcntl
    except ImportError:  # no POSIX advisory locks (Windows): only the "already holds a run" check applies
        return
    key = run_dir.resolve()
    if key in _LOCKS:
        return
    lock = run_dir / ".lock"
    if lock.is_symlink() or (lock.exists() and not lock.is_file()):
        raise FileExistsError(f"{lock}: not a plain file (a link or a folder); leafseg locks the run folder with it "
                              "and will not open what it points to: remove it")
    # O_NOFOLLOW: a link put there between the check and the open is refused too; no O_TRUNC: nothing is emptied
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise FileExistsError(f"{run_dir}: another training run is using this folder") from None
    _LOCKS[key] = handle


def release_run_dir(run_dir: Path) -> None:
    handle = _LOCKS.pop(run_dir.resolve(), None)
    if handle is not None:
        handle.close()


def recover_checkpoint(run_dir: Path) -> None:
    """Finish a checkpoint swap that was interrupted (see :func:`leafseg.files.replace_dir`): with no
    ``checkpoint-last``, the newest complete one of ``.checkpoint-last.tmp`` (complete once trainer_state.json is in
    it) and ``checkpoint-last.old`` takes its place."""
    final, tmp, old = run_dir / CHECKPOINT, run_dir / f".{CHECKPOINT}.tmp", run_dir / f"{CHECKPOINT}.old"
    if not final.exists():
        for candidate in (tmp, old):
            if (candidate / "trainer_state.json").is_file():
                candidate.rename(final)
                say(f"recovered {final} from an interrupted checkpoint swap ({candidate.name})")
                break
    recover_models(run_dir)


def recover_models(run_dir: Path) -> None:
    """The exported models' swaps (:func:`leafseg.files.atomic_dir`): a model folder missing beside its complete
    ``.old`` copy gets it back, and half-written ``.NAME.tmp-*`` folders of a killed process are removed (the run
    folder is locked, so no other process is writing them)."""
    for name in (BEST, LAST):
        final, old = run_dir / name, run_dir / f"{name}.old"
        if not final.exists() and (old / "model_index.json").is_file():
            old.rename(final)
            say(f"recovered {final} from an interrupted swap ({old.name})")
        for stale in run_dir.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)


def _flat(cfg: DictConfig) -> dict:
    try:  # the saved config may name an environment variable that is not set now
        return flatten(to_container(cfg))
    except OmegaConfBaseException:
        return flatten(OmegaConf.to_container(cfg, resolve=False))


def check_resume_config(run_dir: Path, cfg: DictConfig) -> list[str]:
    """Compare the config a run is resumed with to the run's ``config.yaml``: a changed key outside the fields
    marked ``resumable`` (leafseg.config_schema) is an error naming it; the changes allowed come back as lines to
    print. Keys the saved config does not have (options newer than the run) are not compared."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return []
    saved, given = _flat(read_yaml(path, "run configuration")), _flat(cfg)
    for key in RETIRED_KEYS.keys() & saved.keys():  # an option the run used and leafseg no longer has
        if (err := retired_key_error(key, saved[key], f" in {path}")) is not None:
            raise ValueError(f"{err}; the run cannot be resumed") from None
    changed = sorted(k for k in saved.keys() & given.keys() if saved[k] != given[k])
    resumable = resumable_keys()
    refused = [k for k in changed if k not in resumable]
    if refused:
        listing = "; ".join(f"{k}: {saved[k]!r} in the run, {given[k]!r} now" for k in refused)
        raise ValueError(f"{path}: the run cannot be resumed with a different {', '.join(refused)} ({listing}). "
                         "A resumed run keeps what decides what is learned; give the run's values, or start a new "
                         "run (another run.output_dir) to change them")
    notes = [f"resuming with {k} = {given[k]!r} (the run had {saved[k]!r})" for k in changed]
    if "train.max_steps" in changed and given.get("train.lr_schedule") != "constant_with_warmup":
        notes.append(f"train.lr_schedule={given['train.lr_schedule']} depends on train.max_steps: from the resumed "
                     f"step on, the LR follows the {given['train.max_steps']}-step curve")
    return notes


def save_run_config(run_dir: Path, cfg: DictConfig) -> None:
    """``config.yaml`` of the run folder (atomic): the configuration the run was last started or resumed with."""
    write_text(OmegaConf.to_yaml(cfg), run_dir / "config.yaml")


def save_pipeline(pipe, path: Path, card: str | None = None) -> None:
    """save_pretrained (safetensors) and the model card into a temporary folder, then swap it into place; a model
    with non-finite weights is refused (nothing is written)."""
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            assert_finite(component, f"{name} of the model to be saved to {path}")
    try:
        with atomic_dir(path) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            if card is not None:
                (tmp / "README.md").write_text(card)
    except OSError as err:  # the temporary folder is gone, the previous model in place
        raise write_error(path, err) from None


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: dict, export_last, extra) -> None:
    """accelerate state (model and optimiser as safetensors/tensor files, RNG states) + trainer_state.json (step,
    history, LR schedule and EMA scalars) + ema.safetensors into checkpoint-last (atomic swap), then model-last.
    Nothing in it needs code execution to load: the LR schedule and the EMA are not pickled (accelerate would
    unpickle its custom states with weights_only=False)."""
    tmp = run_dir / f".{CHECKPOINT}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            scalars, tensors = extra.state()
            if tensors:
                save_file(tensors, str(tmp / "ema.safetensors"))
            write_json({**state, **scalars}, tmp / "trainer_state.json")  # written last: marks the folder complete
            replace_dir(tmp, run_dir / CHECKPOINT)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as "RuntimeError: ... unexpected pos"
        shutil.rmtree(tmp, ignore_errors=True)
        failed = write_error(run_dir / CHECKPOINT, err)
        if (run_dir / CHECKPOINT).exists():
            failed.strerror += f"; the last good checkpoint {run_dir / CHECKPOINT} is kept (--resume continues it)"
        raise failed from None
    if accelerator.is_main_process:
        export_last(run_dir / LAST)
    accelerator.wait_for_everyone()


def load_trainer_state(accelerator: Accelerator, run_dir: Path, resume: bool, extra) -> dict:
    if not resume:
        return {"step": 0, "best_val_dice": None, "best_step": None, "history": [], "wall_time": []}
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: nothing to resume")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    if "lr_scheduler" not in state:
        raise ValueError(f"{checkpoint} was written by an earlier leafseg, which pickled its LR-schedule and EMA "
                         "state; leafseg no longer unpickles them (loading a pickle can run code): start a new run")
    _check_random_states(checkpoint / f"random_states_{accelerator.process_index}.pkl")
    try:  # accelerate reads its files with weights_only=True: a file that needs code to load is refused
        accelerator.load_state(str(checkpoint))
    except (pickle.UnpicklingError, RuntimeError, OSError) as err:
        raise ValueError(f"{checkpoint}: cannot resume from it ({type(err).__name__}: {err})") from None
    ema_file = checkpoint / "ema.safetensors"
    extra.load(state, load_file(str(ema_file)) if ema_file.exists() else {})
    # wall_time: the earlier processes' timings (up to their last checkpoint); absent in checkpoints before it existed
    # budget_steps: the step count train.time_budget_min decided (absent before the decision and without a budget)
    return {**{k: state[k] for k in ("step", "best_val_dice", "best_step", "history")},
            "wall_time": list(state.get("wall_time", [])),
            **({"budget_steps": state["budget_steps"]} if state.get("budget_steps") is not None else {})}


def _check_random_states(path: Path) -> None:
    """accelerate restores the global random state (which dropout draws from) but skips an unreadable or missing
    file without a word: an unreadable one is an error here, a missing one is said."""
    from accelerate.utils import load as accelerate_load  # torch.load(weights_only=True) + numpy's state types

    if not path.exists():
        say(f"{path} is missing: resuming without the saved random state (dropout, if any, will draw other masks "
              "than an uninterrupted run would)")
        return
    try:
        accelerate_load(path)
    except Exception as err:  # noqa: BLE001  (any reason it cannot be read)
        raise ValueError(f"{path}: cannot resume from it, the saved random state does not load "
                         f"({type(err).__name__}); delete the file to resume without it") from None


class ScheduleAndEMA:
    """The LR scheduler and the EMA, saved as JSON scalars and safetensors instead of accelerate's pickles."""

    def __init__(self, lr_scheduler, ema: EMAModel | None):
        self.lr_scheduler, self.ema = lr_scheduler, ema

    def state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        scalars = {"lr_scheduler": self.lr_scheduler.state_dict()}
        if self.ema is None:
            return scalars, {}
        ema = self.ema.state_dict()
        shadow = ema.pop("shadow_params")
        return {**scalars, "ema": ema}, {f"shadow.{i}": t.detach().cpu().contiguous() for i, t in enumerate(shadow)}

    def load(self, scalars: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.lr_scheduler.load_state_dict(scalars["lr_scheduler"])
        if self.ema is not None:
            if "ema" not in scalars:
                raise ValueError("the checkpoint has no EMA state, but train.ema.enabled is true")
            shadow = [tensors[f"shadow.{i}"] for i in range(len(tensors))]
            self.ema.load_state_dict({**scalars["ema"], "shadow_params": shadow})
