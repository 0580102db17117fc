"""Frozen training targets computed once and kept on disk: mask latents and teacher tokens, per training image and
flip, by PyTorch or ONNX Runtime (``run.cache_backend``), written chunk by chunk into row files that training reads
row by row (memory flat in the dataset size). File names carry a digest of everything the tensors depend on, so
runs may share one cache folder."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .. import data as D
from ..data.store import RowFile, RowWriter
from ..models import autoencoder as ae_ops
from ..models.class_latents import split_groups
from . import run_log


@torch.no_grad()
def cache_rows(row_fn, read, n: int, batch: int, desc: str, passes: int, write) -> None:
    """``write(row_fn(read(i, i + batch)))`` for consecutive chunks of the ``n`` samples: the frozen targets of a
    chunk, (B, flips, ...), go to disk before the next chunk is read, so memory stays flat in ``n``.

    Prints what it is about to compute and an estimate of how long it will take, and keeps its progress bar on
    screen: these caches are the minutes before the first training step. The estimate is made at the second chunk,
    at that chunk's rate: the first carries the warm-up (on an H100 the first teacher batch took 1.2 s of a 1.6 s
    cache, and an estimate from it said 56 s)."""
    timed, total = [], n * passes
    bar = tqdm(total=total, desc=desc, unit="img")
    for i in range(0, n, batch):
        started = time.time()
        chunk = read(i, min(i + batch, n))
        write(row_fn(chunk))
        timed.append(time.time() - started)
        bar.update(len(chunk) * passes)
        if len(timed) == 2 and n > i + len(chunk):
            estimate = sum(timed) + (n - i - len(chunk)) * timed[1] / len(chunk)
            run_log.say(f"{desc}: {n} images x {passes} pass(es) = {total} forward passes, about {estimate:.0f} s (at "
                       f"the second batch's rate; the first took {timed[0]:.1f} s)")
    bar.close()


def flipped_inputs(fn, codes, device):
    """A row function: ``fn`` of each flip of a uint8 chunk, in [0, 1] on ``device``, stacked (B, len(codes), ...).
    Inputs go in channels-last, which makes the frozen convolutions 1.3-1.7x faster on a CPU (same values to 1e-5)."""

    def rows(images_u8: torch.Tensor) -> torch.Tensor:
        outs = []
        for h, v in codes:
            x = D.flip(images_u8, h, v).to(device).float().div_(255)
            outs.append(fn(x.contiguous(memory_format=torch.channels_last)).float().cpu())
        return torch.stack(outs, dim=1)

    return rows


CACHE_BACKENDS = ("torch", "onnx")


class MaskLatents(torch.nn.Module):
    """Masks in [0, 1] (B, 3, H, W) -> scaled mask latents z_0 (the x0 targets); with ``groups`` K structures,
    (B, 3K, H, W) (:func:`~leafseg.models.class_latents.class_masks`) -> (B, K x C, h, w), each encoded alone."""

    def __init__(self, autoencoder: torch.nn.Module, scale: float, groups: int = 1):
        super().__init__()
        self.autoencoder, self.scale, self.groups = autoencoder, scale, groups

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        if self.groups == 1:
            return ae_ops.encode(self.autoencoder, masks * 2 - 1) * self.scale
        b = masks.shape[0]
        latents = ae_ops.encode(self.autoencoder, split_groups(masks, self.groups) * 2 - 1) * self.scale
        return latents.reshape(b, -1, *latents.shape[2:])


class TeacherFeatures(torch.nn.Module):
    """Images in [0, 1] -> the teacher's native feature map (``features_to_tokens`` makes its tokens)."""

    def __init__(self, teacher: torch.nn.Module):
        super().__init__()
        self.teacher = teacher

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher.features(images)


def cache_backend(name: str, device, say=None) -> str:
    """The backend that will compute the caches: ``run.cache_backend`` validated, with ``onnx`` (ONNX Runtime,
    CPU only) falling back to ``torch`` - said through ``say`` - on another device or when onnxruntime is missing."""
    say = say or run_log.say
    if name not in CACHE_BACKENDS:
        raise ValueError(f"run.cache_backend must be one of {CACHE_BACKENDS}, got {name!r}")
    if name == "onnx":
        if torch.device(device).type != "cpu":
            say(f"run.cache_backend=onnx runs on the CPU only; caches computed with torch on {device}")
            return "torch"
        try:
            import onnx  # noqa: F401  (the exporter needs it)
            import onnxruntime  # noqa: F401
        except ImportError:
            say("run.cache_backend=onnx: onnx/onnxruntime not installed (pip install 'leafseg[onnx]'); "
                "caches computed with torch, about 1.5-1.9x slower on a CPU")
            return "torch"
    return name


def frozen_function(module: torch.nn.Module, example: torch.Tensor, backend: str):
    """``module`` as a function of one float32 batch, run by ``backend`` (torch: the module itself). A module the
    ONNX exporter cannot trace (e.g. a teacher from another library) falls back to torch, saying why."""
    if backend == "torch":
        return module
    from ..pipelines.onnx import OnnxFunction

    try:
        return OnnxFunction(module.eval(), example)
    except Exception as error:  # any exporter or runtime failure only costs speed
        name = type(getattr(module, "teacher", None) or getattr(module, "autoencoder", module)).__name__
        run_log.say(f"run.cache_backend=onnx: could not export {name} ({type(error).__name__}: "
                   f"{str(error).splitlines()[0] if str(error) else ''}); computing it with torch")
        return module


def mirror_tokens(tokens: torch.Tensor, grid: int, hflip: bool, vflip: bool) -> torch.Tensor:
    """Flip (N, grid*grid, D) row-major tokens as the image would be flipped."""
    n, _, d = tokens.shape
    return D.flip(tokens.view(n, grid, grid, d).permute(0, 3, 1, 2), hflip, vflip).permute(0, 2, 3, 1).reshape(
        n, grid * grid, d)


def cached(path: Path, accelerator: Accelerator, build, dtype) -> RowFile:
    """The row file ``path`` (``.bin`` + ``.json``), built first on the main process when missing: ``build(write)``
    calls ``write`` with consecutive (B, ...) tensors, stored as ``dtype``; written under a temporary name and
    renamed when complete (the ``.json`` last), so an interrupted build is never read. Every rank then reads rows
    from the file as it needs them."""
    if not path.with_suffix(".json").exists() and accelerator.is_main_process:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        writer = None

        def write(rows: torch.Tensor) -> None:
            nonlocal writer
            if writer is None:
                writer = RowWriter(tmp, dtype, rows.shape[1:])
            writer.write(rows.contiguous().numpy())

        try:
            build(write)
            writer.close()
            os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(tmp.with_suffix(".json"), path.with_suffix(".json"))
        finally:
            for suffix in (".bin", ".json"):
                tmp.with_suffix(suffix).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return RowFile(path)


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def target_cache_key(*parts, backend: str, device) -> str:
    """``cache_key`` of the training targets' inputs plus how they were computed: the backend and the device type
    (PyTorch runs CUDA convolutions in TF32 by default, a 10-bit mantissa, so caches built there are not the CPU's,
    and a run.cache_dir shared by a GPU and a CPU job must not mix them). Torch on the CPU adds nothing, so caches
    from before either option existed keep their names."""
    how = [backend] if backend != "torch" else []
    device_type = torch.device(device).type
    return cache_key(*parts, *how, *([device_type] if device_type != "cpu" else []))
