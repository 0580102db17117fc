"""Evaluation: the ``evaluate`` loop over a split, ``score`` for any folder of predicted masks, and the ``report``
they write; the metrics live in :mod:`leafseg.metrics`, the drawings in :mod:`leafseg.figures`."""

from .evaluate import evaluate

__all__ = ["evaluate"]
