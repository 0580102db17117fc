"""torch.compile for a pipeline's networks: the image encoder, the UNet and the mask decoder (a peer's network),
compiled in place by TorchInductor into fused kernels (C++ on the CPU, Triton on CUDA).

Compiling happens on the first call of each network (and again for a new input shape: the first batch of another
size), so the first image is slow and later ones fast. Inductor keeps the compiled kernels in a folder that outlives
the process, so a second run pays only part of it: :func:`kernel_cache` says where (``$TORCHINDUCTOR_CACHE_DIR``, or
``~/.cache/leafseg/inductor``). The weights are untouched (``nn.Module.compile`` keeps the module and its state
dict as they were), so a compiled pipeline saves and loads as an ordinary one.

On the CPU inductor needs a C++ compiler (``g++``, ``clang++`` or ``$CXX``); :func:`compiler_missing` says when there
is none, and :func:`compile_pipeline` refuses with that reason instead of failing on the first image.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from ..files import user_cache

logger = logging.getLogger(__name__)

#: torch.compile modes leafseg offers (CUDA graphs are left out: leafseg calls its networks with varying batches)
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def kernel_cache() -> Path:
    """The folder inductor keeps compiled kernels in across runs: ``$TORCHINDUCTOR_CACHE_DIR`` when the user set it,
    else ``$XDG_CACHE_HOME/leafseg/inductor`` (``~/.cache/leafseg/inductor``), which is then set for this process
    (inductor's own default is a temp folder, which a reboot empties)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # inductor writes its default into the environment the first time it is asked: that one is not the user's
    if current and os.path.abspath(current) != os.path.abspath(default_cache_dir()):
        return Path(current)
    folder = user_cache() / "inductor"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


def compiler_missing(device: str | torch.device) -> str | None:
    """Why torch.compile cannot run on ``device`` here, or None when it can."""
    device = torch.device(device)
    if device.type == "cpu":
        candidates = [os.environ.get("CXX"), "g++", "clang++", "c++"]
        if not any(c and shutil.which(c) for c in candidates):
            return "no C++ compiler found (g++, clang++ or $CXX), which torch.compile needs on the CPU"
    elif device.type == "cuda":
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed, which torch.compile needs on CUDA"
    else:
        return f"torch.compile is not offered on {device.type}"
    return None


def _ready_to_compile(mode: str, device: str | torch.device) -> Path:
    """Check ``mode`` and the compiler for ``device`` (ValueError / RuntimeError with the reason); returns the
    kernel cache folder, set for this process."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    reason = compiler_missing(device)
    if reason:
        raise RuntimeError(f"cannot compile: {reason}")
    return kernel_cache()


def compiled_parts(pipe) -> dict[str, torch.nn.Module]:
    """The networks :func:`compile_pipeline` compiles, by name: the image encoder, the UNet and the autoencoder's
    decoder (LEAF), or the network (a peer's)."""
    parts = {}
    for name in ("image_encoder", "unet", "network"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            parts[name] = module
    decoder = getattr(getattr(pipe, "autoencoder", None), "decoder", None)
    if isinstance(decoder, torch.nn.Module):  # decode() is not forward(): compile the network decode() calls
        parts["mask_decoder"] = decoder
    return parts


def compile_pipeline(pipe, mode: str = "default") -> list[str]:
    """Compile ``pipe``'s networks in place (:func:`compiled_parts`) with inductor; returns their names.

    Raises:
        ValueError: an unknown ``mode``. RuntimeError: no compiler for the pipeline's device (the reason).
    """
    from .onnx import OnnxSegPipeline

    if isinstance(pipe, OnnxSegPipeline):
        raise ValueError("an ONNX export runs in ONNX Runtime, which fuses its own graph; compile the PyTorch model")
    cache = _ready_to_compile(mode, pipe.device)
    parts = compiled_parts(pipe)
    for module in parts.values():
        module.compile(backend="inductor", mode=mode)
    pipe.compiled = mode
    logger.info(f"compiling {', '.join(parts)} with torch.compile ({mode}) on the first call: that call takes longer "
                f"(minutes on a small CPU); kernels kept in {cache} for later runs")
    return list(parts)


def unet_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """A diffusers UNet's compute blocks (ResNet, attention, down- and upsampling), in module order: what training
    compiles one by one, so that a hook on a down block (the alignment features) stays outside every compiled graph
    and the blocks' own graphs do not depend on it."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

    kinds = (ResnetBlock2D, Attention, Downsample2D, Upsample2D)
    return [m for m in unet.modules() if isinstance(m, kinds)]


def compile_module(*modules: torch.nn.Module, mode: str = "default") -> None:
    """Compile ``modules`` in place for training. Random ops in compiled graphs (dropout) draw from torch's
    generator as eager does (inductor's ``fallback_random``), so a compiled run draws eager's masks and resumes bit
    for bit. Refuses as :func:`compile_pipeline` does."""
    _ready_to_compile(mode, next(modules[0].parameters()).device)
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    for module in modules:
        module.compile(backend="inductor", mode=mode)


def compile_for_training(image_encoder: torch.nn.Module, unet: torch.nn.Module, mode: str = "default") -> int:
    """Compile a LEAF training run's networks in place (:func:`compile_module`): the image encoder whole and the
    UNet block by block (:func:`unet_blocks`). Returns the number of modules compiled."""
    modules = [image_encoder, *unet_blocks(unet)]
    compile_module(*modules, mode=mode)
    return len(modules)
