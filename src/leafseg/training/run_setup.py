"""Setting a run up, before any data is read: the device (``run.device``), the arithmetic
(``train.mixed_precision``), a clean accelerate state, the run folder (locked, resumable or refused) and its
``config.yaml``. Everything here refuses a wrong value before minutes of work are spent.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from ..config_schema import check_values
from ..models.autoencoder import autoencoder_folder
from ..pipelines.precision import bf16_is_fast
from .checkpoints import (CHECKPOINT, check_resume_config, lock_run_dir, recover_checkpoint, release_run_dir,
                          save_run_config)
from .run_log import run_log, say


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
    """``train.mixed_precision``; ``auto`` is bf16 autocast when training on a CUDA GPU that supports it (``cuda``
    None: whenever one is visible) or on a CPU with bf16 units (AVX-512 BF16 / AMX: the `cpu` recipe's step 0.29 s
    against 0.39 s at the same val Dice, docs/speed.md), fp32 elsewhere (a CPU without them emulates bf16, slowly)."""
    if value is False:  # YAML reads an unquoted `no` as false
        value = "no"
    value = str(value)  # a MixedPrecision member, or a plain string
    if value == "auto":
        cuda = torch.cuda.is_available() if cuda is None else cuda
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "no"
        return "bf16" if bf16_is_fast("cpu") else "no"
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


RUN_MARK = ".leafseg-run"  # in every run folder leafseg made: the only kind a run writes into once it holds files


def check_run_folder(run_dir: Path, data_roots: list, resume: bool) -> None:
    """The output rule of every leafseg command, for a training run: the run folder is new, empty, or one leafseg
    made (it holds :data:`RUN_MARK` or a checkpoint); never a link, a file, a dataset's folder or a folder inside or
    around one; ``resume`` only into a run folder. Checked before anything is written."""
    if run_dir.is_symlink():
        raise ValueError(f"{run_dir}: the run folder is a link (to {os.readlink(run_dir)}); give a real folder")
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"{run_dir}: the run folder is a file, not a folder")
    for root in data_roots:
        a, b = run_dir.resolve(), Path(root).resolve()
        if a == b or a in b.parents or b in a.parents:
            raise ValueError(f"{run_dir}: the run folder would be, hold or lie inside the dataset {root}; choose a "
                             "run folder apart from the data")
    made_by_leafseg = (run_dir / RUN_MARK).is_file() or (run_dir / CHECKPOINT).exists()
    if resume and not made_by_leafseg:
        raise FileNotFoundError(f"{run_dir}: no leafseg run to resume here (a run folder holds {RUN_MARK} or "
                                f"{CHECKPOINT}/); drop --resume to start a new run")
    if run_dir.is_dir() and not made_by_leafseg and any(run_dir.iterdir()):
        shown = ", ".join(sorted(p.name for p in run_dir.iterdir())[:5])
        raise FileExistsError(f"{run_dir}: holds files leafseg did not write ({shown}); a run goes into a new or "
                              "empty folder, so that nothing of yours is overwritten or read as the run's")


def start_run(cfg: DictConfig, resume: bool) -> tuple[Accelerator, Path]:
    """Accelerator, run folder (locked for this run) and config.yaml. Refuses, before writing anything, a config
    with unset keys, a run folder :func:`check_run_folder` refuses, a folder another training holds, a folder
    that holds a run unless resuming, and a mask autoencoder that is not where the config says (or, for TAEF2
    without a path, in none of the places looked in)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"config value(s) not set: {', '.join(missing)} (give them as key=value or in the config)")
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as err:  # e.g. paper.yaml's ${oc.env:LEAFSEG_PRETRAINED} with it unset
        raise ValueError(f"config value {err.full_key} cannot be resolved: {str(err.msg).splitlines()[0]} (set "
                         f"the environment variable it names, or give {err.full_key}=... as key=value)") from None
    tc = cfg.train
    check_values(cfg)  # again: a config may have been changed in Python since load_config
    run_dir = Path(cfg.run.output_dir)
    roots = [cfg.data.root, *[s.root for s in (cfg.data.get("sources") or [])]]
    check_run_folder(run_dir, [r for r in roots if r], resume)
    if str(cfg.method) == "leaf":  # the mask autoencoder's folder now, not after the data are decoded
        folder = autoencoder_folder(str(cfg.autoencoder.kind), cfg.autoencoder.path)
        if folder is not None and not folder.exists():
            raise FileNotFoundError(f"autoencoder.path: {folder} not found")
    if tc.num_threads:
        torch.set_num_threads(int(tc.num_threads))
    cuda = use_cuda(str(cfg.run.device))
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
        (run_dir / RUN_MARK).write_text("a leafseg training run; `leafseg train --resume` continues it\n",
                                        encoding="utf-8")
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
