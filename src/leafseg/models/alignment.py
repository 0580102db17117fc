"""Feature alignment (LEAF's distillation term): projector phi and the negative-cosine loss.

L_align = mean over batch and tokens of -cos(phi(h_token), teacher_token), where h is a UNet down-path hidden state
flattened to tokens in row-major order. The projector exists only during training; it is never exported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class Projector(ModelMixin, ConfigMixin):
    """Per-token MLP: Linear(c, hidden) - SiLU - Linear(hidden, hidden) - SiLU - Linear(hidden, d)."""

    @register_to_config
    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(tokens)


def feature_map_to_tokens(h: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C), row-major like ViT patch tokens."""
    return h.flatten(2).transpose(1, 2)


def alignment_loss(projected: torch.Tensor, teacher_tokens: torch.Tensor, reference_batch_quirk: bool = False
                   ) -> torch.Tensor:
    """Mean negative cosine similarity between (B, N, D) projected student tokens and teacher tokens.

    ``reference_batch_quirk`` reproduces the authors' code, which divides this mean once more by the batch size
    (an effective weight of lambda / B); the paper's formula is the plain mean.
    """
    if projected.shape != teacher_tokens.shape:
        raise ValueError(f"student tokens {tuple(projected.shape)} and teacher tokens "
                         f"{tuple(teacher_tokens.shape)} differ: the alignment layer's grid must match the teacher's")
    cos = F.cosine_similarity(projected.float(), teacher_tokens.float(), dim=-1)
    loss = -cos.mean()
    if reference_batch_quirk:
        loss = loss / projected.shape[0]
    return loss
