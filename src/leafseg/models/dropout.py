"""Dropout with a choice of how its keep mask is drawn.

``torch`` is ``torch.nn.functional.dropout`` (the authors'). ``words16`` draws the same kind of mask, each element
kept independently with probability 1 - p, from 16-bit slices of 64-bit random words: four elements per word
instead of one draw per element. On a CPU, torch's Bernoulli sampling is sequential and was the largest single
operator of the `cpu` recipe's forward (10 masks of the image encoder a step; 17% of the step's CPU time under
torch.profiler on 2 cores); ``words16`` applies a mask 1.8-4.8x faster there (experiments/speed/dropout_speed.py).
The keep probability is quantised to 1/65536 (0.8 -> 52429/65536 = 0.800003) and the kept values are scaled by its
inverse, so the output's expectation is the input exactly. Both draw from the default generator, as
``torch.manual_seed`` and a resumed run's saved RNG state expect; the numbers differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DROPOUT_SAMPLERS = ("torch", "words16")


def keep_threshold(p: float) -> int:
    """``words16``'s keep probability in 1/65536 units: round((1 - p) * 65536)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    return round((1.0 - p) * 65536)


def dropout_words16(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Dropout of ``x`` with the keep mask from 16-bit slices of random 64-bit words (see the module)."""
    if not training or p == 0:
        return x
    keep = keep_threshold(p)
    if keep == 0:
        return x * 0
    n = x.numel()
    # every bit of the words is random (from=-2**63, to=None: the full 64-bit range); int16 values are uniform
    # on [-32768, 32767], so "value < keep - 32768" holds with probability keep / 65536
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, None)
    draws = words.view(torch.int16)[:n].view(x.shape)
    return x * ((draws < keep - 32768).to(x.dtype) * (65536.0 / keep))


def dropout(x: torch.Tensor, p: float, training: bool, sampler: str = "torch") -> torch.Tensor:
    """``F.dropout`` (``sampler="torch"``) or :func:`dropout_words16` (``"words16"``)."""
    if sampler == "torch":
        return F.dropout(x, p=p, training=training)
    if sampler == "words16":
        return dropout_words16(x, p, training)
    raise ValueError(f"dropout sampler must be one of {DROPOUT_SAMPLERS}, got {sampler!r}")


class Dropout(torch.nn.Module):
    """``torch.nn.Dropout`` with a :data:`DROPOUT_SAMPLERS` choice (replaces nn.Dropout inside diffusers blocks)."""

    def __init__(self, p: float, sampler: str = "torch"):
        super().__init__()
        if sampler not in DROPOUT_SAMPLERS:
            raise ValueError(f"dropout sampler must be one of {DROPOUT_SAMPLERS}, got {sampler!r}")
        self.p, self.sampler = float(p), sampler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.sampler)

    def extra_repr(self) -> str:
        return f"p={self.p}, sampler={self.sampler}"
