"""Several structures through the mask autoencoder: one latent per structure, stacked as channel groups.

LEAF encodes a binary mask, replicated to three channels, to a latent of C channels. With K structures each one's
binary mask is encoded the same way and the K latents are stacked: the UNet predicts K x C channels beside the C of
the image condition, still in one reverse step, and each group is decoded to that structure's soft mask. Measured
on cxr-structures label maps at 128 px, this carries every structure through the frozen TAEF2 with Dice >= 0.994
(airways, the thinnest, lowest), where painting the structures as colours of one latent lost up to 4.5 points
(``experiments/multi-class``). With K = 1 everything here is LEAF's binary path.
"""

from __future__ import annotations

import torch

__all__ = ["class_masks", "class_probabilities", "split_groups"]


def class_masks(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) class indices (bool or integer) -> (B, 3K, H, W) float 0/1: structure k's mask replicated to three
    channels at channels 3(k-1) .. 3k-1 (for K = 1 LEAF's replicated binary mask)."""
    labels = labels.long()
    per_class = [(labels == k) for k in range(1, num_classes + 1)]
    return torch.stack(per_class, 1).repeat_interleave(3, dim=1).float()


def split_groups(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, G x C, ...) -> (B x G, C, ...): each channel group as its own sample (encode or decode them as one
    batch); the inverse is ``y.view(B, G * C', ...)`` of the (B x G, C', ...) result."""
    b, gc = x.shape[:2]
    return x.reshape(b * groups, gc // groups, *x.shape[2:])


def class_probabilities(soft: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) soft masks in [0, 1], one per structure -> (B, K + 1, H, W) class probabilities (background
    first): each structure's soft mask taken as an independent probability, conditioned on exactly one class per
    pixel (background: none of them). With K = 1 the foreground probability is the soft mask itself."""
    s = soft.float().clamp(1e-6, 1 - 1e-6)
    log_off = (1 - s).log()
    total_off = log_off.sum(1, keepdim=True)
    logp = torch.cat([total_off, total_off - log_off + s.log()], dim=1)
    return logp.softmax(1)
