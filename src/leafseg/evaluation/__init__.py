"""Evaluation: per-image ``metrics`` (a pure function and a small class per metric, MONAI-style, plus the paper's
numbers), the ``evaluate`` loop over a split, and the ``figures`` it draws."""

from .evaluate import evaluate

__all__ = ["evaluate"]
