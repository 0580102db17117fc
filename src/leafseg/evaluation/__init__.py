"""Evaluation: the ``evaluate`` loop over a split, ``score`` for any folder of predicted masks, the ``report`` they
write, and ``compare`` for two evaluations of the same images; the metrics live in :mod:`leafseg.metrics`, the
drawings in :mod:`leafseg.figures`."""

from .compare import compare
from .evaluate import evaluate

__all__ = ["compare", "evaluate"]
