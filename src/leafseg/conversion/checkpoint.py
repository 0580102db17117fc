"""Reading checkpoint files without running code: safetensors, or torch pickles with ``weights_only=True``."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..models.weights import UnsafeWeightsError, refused_pickle

__all__ = ["CHECKPOINT_SUFFIXES", "UnsafeCheckpointError", "load_checkpoint"]

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class UnsafeCheckpointError(UnsafeWeightsError):
    """A pickle checkpoint that cannot be read without executing code (custom classes, functions...)."""


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, on CPU: ``.safetensors`` via safetensors, ``.ckpt/.pt/.pth/.bin`` via
    ``torch.load(weights_only=True)``. ``{"state_dict": ...}`` wrappers (Lightning) are unwrapped and non-tensor
    entries dropped. A pickle that needs code execution to load is refused (:class:`UnsafeCheckpointError`, a
    ``ValueError``); a missing file raises ``FileNotFoundError`` naming the path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise ValueError(f"{path}: not a file (expected a .safetensors or {'/'.join(CHECKPOINT_SUFFIXES)} checkpoint)")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError for corrupt headers
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    elif suffix in CHECKPOINT_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(str(refused_pickle(path, err))) from None
        except (RuntimeError, EOFError, OSError) as err:
            raise ValueError(f"{path}: not a readable torch checkpoint ({err})") from err
    else:
        raise ValueError(f"{path}: unknown checkpoint type {suffix!r}; expected .safetensors or "
                         f"{', '.join(CHECKPOINT_SUFFIXES)}")
    while isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path}: no tensors in this checkpoint")
    return tensors
