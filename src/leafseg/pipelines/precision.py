"""Inference precision: float32 everywhere, or bf16 where the hardware has bf16 units (CPUs with AVX-512 BF16 / AMX,
recent GPUs), for the UNet and the mask decoder (and a peer's network), every part channels-last on the CPU. The
image encoder and the x0 step stay float32: measured on a trained `cpu`-recipe model (`benchmarks/precision.py
--parts`, CVC-ClinicDB test, docs/speed.md), the image encoder alone in bf16 moved the masks by Dice 0.0053 against
fp32's, beyond the 0.005 this project allows; the UNet alone by 0.0017, and the decoder added ~0.0004. Which parts
go to bf16 is a parameter (``parts``) so that the benchmark can measure each one.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16")
# a pipeline's networks that may run in bf16; "network" is a peer method's single segmentation network
CASTABLE_PARTS = ("image_encoder", "unet", "autoencoder", "network")
BF16_PARTS = ("unet", "autoencoder", "network")


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


def set_precision(pipe, precision: str, parts: tuple[str, ...] = BF16_PARTS) -> str:
    """Cast the pipeline's ``parts`` (those it has) to the resolved precision, in place; every other part is set to
    float32. In bf16 on the CPU every part is also made channels-last. Returns the resolved precision (``fp32`` or
    ``bf16``).

    Args:
        pipe: a loaded pipeline (LEAF or a peer's).
        precision: ``auto``, ``fp32`` or ``bf16``.
        parts: names among :data:`CASTABLE_PARTS` to run in bf16 when the precision is bf16.
    """
    unknown = sorted(set(parts) - set(CASTABLE_PARTS))
    if unknown:
        raise ValueError(f"parts must be among {CASTABLE_PARTS}, got {unknown}")
    resolved = resolve_precision(precision, pipe.device)
    for name in CASTABLE_PARTS:
        module = getattr(pipe, name, None)
        if not isinstance(module, torch.nn.Module):
            continue
        low = resolved == "bf16" and name in parts
        dtype = torch.bfloat16 if low else torch.float32
        # torch's own .to: diffusers' ModelMixin.to warns about "modules to keep in float32" (it lists none)
        if next(module.parameters()).dtype != dtype:
            torch.nn.Module.to(module, dtype=dtype)
        if resolved == "bf16" and pipe.device.type == "cpu":
            # every part, the float32 image encoder too: channels-last alone made it 1.25x faster on the CPU
            torch.nn.Module.to(module, memory_format=torch.channels_last)
    return resolved
