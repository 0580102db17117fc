"""The teacher contract: ``teacher(images, grid)`` -> (B, grid * grid, feature_dim) float32 tokens.

Every teacher takes ``images`` (B, 3, H, W), RGB in [0, 1] (any float dtype, any H, W), and returns float32 tokens
on a grid x grid layout in row-major order (token ``i * grid + j`` is row i, column j). The teacher computes features
at its own native grid and resamples them to ``grid``: adaptive average pooling when shrinking, bilinear
interpolation (align_corners=False) when enlarging, nothing when equal. Teachers are frozen: no parameter requires
grad, they stay in eval mode even if ``.train()`` is called (also through a parent module), and ``forward`` runs
under ``torch.no_grad()``. ``name`` identifies the features (teacher, layer, preprocessing, weights) and is used as a
cache key.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from ..alignment import feature_map_to_tokens

__all__ = ["Teacher", "features_to_tokens", "resample_to_grid"]


def resample_to_grid(features: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, grid, grid): adaptive average pooling along axes that shrink, then bilinear
    (align_corners=False) along axes that grow; unchanged when already grid x grid."""
    h, w = features.shape[-2:]
    if (h, w) == (grid, grid):
        return features
    if grid < h or grid < w:
        features = F.adaptive_avg_pool2d(features, (min(grid, h), min(grid, w)))
    if features.shape[-2:] != (grid, grid):
        features = F.interpolate(features, size=(grid, grid), mode="bilinear", align_corners=False)
    return features


def features_to_tokens(features: torch.Tensor, grid: int) -> torch.Tensor:
    """Native feature map (B, D, h, w) -> (B, grid * grid, D) float32 row-major tokens, as teachers return them."""
    return feature_map_to_tokens(resample_to_grid(features.float(), grid)).contiguous()


class Teacher(nn.Module, ABC):
    """Frozen feature extractor: (B, 3, H, W) images in [0, 1] -> (B, grid * grid, feature_dim) float32 tokens.

    Subclasses set ``name`` (cache key, includes the layer), ``feature_dim`` and ``native_grid`` (the side of the
    feature map the teacher produces before resampling), implement :meth:`features` and call :meth:`freeze` at the
    end of ``__init__``. See the module docstring for the full contract.
    """

    name: str
    feature_dim: int
    native_grid: int

    # Input values outside [0, 1] by more than this are rejected: the usual mistakes are [-1, 1] or 0..255 input.
    range_tolerance = 1e-3

    @abstractmethod
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> native feature map (B, feature_dim, native_grid, native_grid)."""

    def freeze(self) -> Teacher:
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # a teacher is always in eval mode

    def forward(self, images: torch.Tensor, grid: int) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"{self.name}: expected float images in [0, 1], got dtype {images.dtype}")
        grid = int(grid)
        if grid < 1:
            raise ValueError(f"grid must be positive, got {grid}")
        lo, hi = torch.aminmax(images.detach())
        lo, hi = float(lo), float(hi)
        if lo < -self.range_tolerance or hi > 1 + self.range_tolerance:
            raise ValueError(f"{self.name}: images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
                             "(convert [-1, 1] with (x + 1) / 2 and uint8 with x / 255)")
        with torch.no_grad():
            return features_to_tokens(self.features(images), grid)
