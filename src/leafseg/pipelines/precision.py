"""Inference precision: float32 everywhere, or bf16 for the image encoder and the UNet where the hardware has bf16
units (CPUs with AVX-512 BF16 / AMX, recent GPUs) and channels-last on the CPU. The mask decoder and the x0 step
stay in float32 in both: the mask is decided there, and they are a small share of the work in the laptop recipe.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def bf16_is_fast(device: str | torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (elsewhere PyTorch emulates it, far slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``auto``: bf16 where :func:`bf16_is_fast`, fp32 elsewhere; ``fp32`` and ``bf16`` as asked."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return precision


def set_precision(pipe, precision: str) -> str:
    """Cast a loaded pipeline's image encoder and UNet, or a peer's network (those it has), to the resolved
    precision, in place; returns it (``fp32`` or ``bf16``)."""
    resolved = resolve_precision(precision, pipe.device)
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float32
    channels_last = resolved == "bf16" and pipe.device.type == "cpu"
    for name in ("image_encoder", "unet", "network"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            # torch's own .to: diffusers' ModelMixin.to warns about "modules to keep in float32" (it lists none)
            if next(module.parameters()).dtype != dtype:
                torch.nn.Module.to(module, dtype=dtype)
            if channels_last:
                torch.nn.Module.to(module, memory_format=torch.channels_last)
    return resolved
