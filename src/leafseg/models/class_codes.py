"""Several structures through one mask latent: each class painted in its own colour.

LEAF encodes a binary mask as a white-on-black RGB image. With K structures, class k is painted in a corner of the
RGB cube (its *code*), so the frozen autoencoder, the 2C-channel UNet and the single reverse step stay exactly as
they are; the decoded image is read back pixel by pixel as the most probable class, each channel taken as the
probability of a 1 in the pixel's code (:func:`class_probabilities`). A binary mask is white on black, as in LEAF,
and binary models keep LEAF's own rule (mean of the channels > 0.5): nothing here runs for them. Seven structures
fit the cube's corners; the round trip through the autoencoder is measured in ``experiments/multi-class``.
"""

from __future__ import annotations

import torch

__all__ = ["MAX_CLASSES", "class_codes", "colour_masks", "class_probabilities"]

# corners of the RGB cube, farthest from the black background first; a binary mask is white, as in LEAF
_CORNERS = ((1, 1, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1))
MAX_CLASSES = len(_CORNERS)


def class_codes(num_classes: int) -> torch.Tensor:
    """(K + 1, 3) float codes in [0, 1]: row 0 the background (black), row k class k."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"{num_classes} structures: a LEAF model segments 1 to {MAX_CLASSES} structures (one per "
                         "corner of the RGB cube its mask autoencoder sees)")
    return torch.tensor(((0, 0, 0),) + _CORNERS[:num_classes], dtype=torch.float32)


def colour_masks(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) class indices (bool or integer) -> (B, 3, H, W) float images in [0, 1], the autoencoder's input
    (a binary mask replicated to three channels)."""
    codes = class_codes(num_classes).to(labels.device)
    return codes[labels.long()].permute(0, 3, 1, 2)


def class_probabilities(colours: torch.Tensor, num_classes: int, eps: float = 1e-4) -> torch.Tensor:
    """(B, 3, H, W) decoded images in [0, 1] -> (B, K + 1, H, W) class probabilities: each channel read as the
    probability that the pixel's code has a 1 there, the channels independent, normalised over the K + 1 codes
    (values clamped to [eps, 1 - eps])."""
    codes = class_codes(num_classes).to(colours.device)
    s = colours.float().clamp(eps, 1 - eps)
    log_on, log_off = s.log(), (1 - s).log()  # (B, 3, H, W)
    logp = torch.einsum("kc,bchw->bkhw", codes, log_on) + torch.einsum("kc,bchw->bkhw", 1 - codes, log_off)
    return logp.softmax(1)
