"""A frame-level "nothing here" decision: a frame whose score falls below a calibrated threshold gets an empty mask.

A segmentation model trained on frames that all hold an object paints something on most frames without one (folds,
lumen walls, glare). The decision reads a score off what the model already computed, per frame, at the processing
resolution (``FRAME_SCORES``):

* ``area``: the fraction of the frame above the pixel threshold;
* ``peak``: the highest probability in the frame;
* ``confidence``: the mean probability over the pixels above the threshold (0 when there are none).

:func:`calibrate` chooses the score and its threshold on validation frames by a rule fixed in advance: among the
thresholds under which the mean Dice of the frames *with* an object drops by at most ``max_drop`` (a cleared frame
with an object scores 0), the one that clears the most frames *without* one; the score that clears most wins (ties:
the smaller Dice drop). ``leafseg calibrate`` runs it on two evaluations and stores the result with the model
(``model_index.json``), where predict, evaluate, serve and the Python API apply it unless told not to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: evaluate's start-up reads FRAME_SCORES and roc_auc only
    import torch

__all__ = ["FRAME_SCORES", "FrameDecision", "calibrate", "frame_scores", "roc_auc", "stored_decision"]

FRAME_SCORES = ("area", "peak", "confidence")


@dataclass(frozen=True)
class FrameDecision:
    """Clear a frame's mask when its ``score`` (one of ``FRAME_SCORES``) is below ``threshold``."""

    score: str
    threshold: float

    def __post_init__(self):
        if self.score not in FRAME_SCORES:
            raise ValueError(f"frame decision score must be one of {FRAME_SCORES}, got {self.score!r}")
        if not np.isfinite(self.threshold):
            raise ValueError(f"frame decision threshold must be a finite number, got {self.threshold!r}")

    @classmethod
    def from_config(cls, value) -> FrameDecision | None:
        """The decision stored in a pipeline's config (a dict, or None for none)."""
        if value is None:
            return None
        if isinstance(value, FrameDecision):
            return value
        if not isinstance(value, dict) or set(value) - {"score", "threshold", "rule"} or "score" not in value:
            raise ValueError(f"frame_decision must be {{'score': ..., 'threshold': ...}}, got {value!r}")
        return cls(str(value["score"]), float(value["threshold"]))

    def to_config(self) -> dict:
        return asdict(self)

    def clears(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """Which frames the decision empties, from :func:`frame_scores`' output."""
        return np.asarray(scores[self.score]) < self.threshold


def stored_decision(pipe, enabled: bool = True) -> FrameDecision | None:
    """The decision a pipeline's config holds (None when it has none or ``enabled`` is False)."""
    if not enabled:
        return None
    config = getattr(pipe, "config", None)
    return FrameDecision.from_config(config.get("frame_decision") if config is not None else None)


def frame_scores(probabilities: torch.Tensor, threshold: float) -> dict[str, np.ndarray]:
    """(B, R, R) probabilities at the processing resolution -> each of ``FRAME_SCORES`` per frame, (B,) float64."""
    import torch

    p = probabilities.float().flatten(1)
    above = p > threshold
    count = above.sum(1)
    confidence = torch.where(count > 0, (p * above).sum(1) / count.clamp(min=1), torch.zeros_like(p[:, 0]))
    return {"area": (count.double() / p.shape[1]).cpu().numpy(), "peak": p.amax(1).double().cpu().numpy(),
            "confidence": confidence.double().cpu().numpy()}


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for ``positive`` frames (ties count half); None without both kinds."""
    scores, positive = np.asarray(scores, float), np.asarray(positive, bool)
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def calibrate(positive_scores: dict[str, np.ndarray], positive_dice: np.ndarray,
              negative_scores: dict[str, np.ndarray], max_drop: float = 0.01) -> dict:
    """The decision by the rule of the module docstring, from validation frames with an object (their scores and
    Dice) and without one (their scores). Returns ``{"decision": FrameDecision | None, "candidates": [...]}``; None
    when no threshold clears a frame without an object within the allowed drop."""
    dice = np.asarray(positive_dice, float)
    if not len(dice) or not len(next(iter(negative_scores.values()))):
        raise ValueError("calibration needs validation frames with an object and frames without one")
    base = float(dice.mean())
    candidates = []
    for name in FRAME_SCORES:
        pos, neg = np.asarray(positive_scores[name], float), np.asarray(negative_scores[name], float)
        best = None
        # thresholds just above each observed score: every distinct decision is tried once
        for t in np.unique(np.concatenate([pos, neg])):
            t = float(np.nextafter(t, np.inf))
            drop = base - float(np.where(pos < t, 0.0, dice).mean())
            if drop > max_drop + 1e-12:
                continue
            cleared = int((neg < t).sum())
            if best is None or cleared > best["negatives_cleared"] or (
                    cleared == best["negatives_cleared"] and drop < best["dice_drop"]):
                best = {"score": name, "threshold": t, "negatives_cleared": cleared, "dice_drop": drop,
                        "positives_cleared": int((pos < t).sum())}
        auc = roc_auc(np.concatenate([pos, neg]), np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)])
        candidates.append({**(best or {"score": name, "threshold": None, "negatives_cleared": 0, "dice_drop": 0.0,
                                       "positives_cleared": 0}), "auroc": auc})
    chosen = max(candidates, key=lambda c: (c["negatives_cleared"], -c["dice_drop"]))
    decision = (FrameDecision(chosen["score"], chosen["threshold"])
                if chosen["threshold"] is not None and chosen["negatives_cleared"] > 0 else None)
    return {"decision": decision, "candidates": candidates, "positive_dice": base, "n_positive": len(dice),
            "n_negative": len(next(iter(negative_scores.values()))), "max_drop": max_drop}
