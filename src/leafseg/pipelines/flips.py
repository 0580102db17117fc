"""Flip test-time augmentation (nnU-Net's "mirroring"): the image and its horizontal, vertical and doubly flipped
copies go through the network as one batch, each soft mask is flipped back, and the four are averaged. The training
flips both ways, so each copy is an image the model has learned from; the four views form a group, so the result of
a flipped input is the flipped result.
"""

from __future__ import annotations

import torch

# identity, horizontal, vertical, both (dims of the last two axes)
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def flipped_views(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (4B, C, H, W): the batch, then its horizontal, vertical and doubly flipped copies."""
    return torch.cat([images.flip(dims) if dims else images for dims in FLIPS])


def merge_views(soft: torch.Tensor) -> torch.Tensor:
    """(..., 4B, H, W) soft masks of :func:`flipped_views` -> (..., B, H, W): each flipped back, then averaged."""
    views = soft.unflatten(-3, (len(FLIPS), soft.shape[-3] // len(FLIPS)))
    return torch.stack([views[..., k, :, :, :].flip(dims) if dims else views[..., k, :, :, :]
                        for k, dims in enumerate(FLIPS)]).mean(0)
