"""SegmentationImageProcessor: what goes into a segmentation pipeline and what comes out of it, as diffusers'
Marigold image processor does for depth: images of any size and type in -> a square batch in [-1, 1] at the
processing resolution; soft masks at that resolution out -> per-image probabilities, masks and uncertainty at each
input's own size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput
from PIL import Image

from .frame_decision import FrameDecision, frame_scores


def check_threshold(threshold: float) -> float:
    """A mask threshold is a probability strictly between 0 and 1 (0 or 1 would mark every or no pixel)."""
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be a probability between 0 and 1 (exclusive), got {threshold}")
    return float(threshold)


@dataclass
class SegmentationPipelineOutput(BaseOutput):
    """Per input image, at the input's own size:

    masks: bool arrays (H, W) -- for a multi-class model uint8 class indices 0..K (0 background; the label table's
    values through ``pipe.label_table.values_of``); probabilities: float32 arrays in [0, 1] (the soft mask, ensemble
    mean; multi-class: (K + 1, H, W), one map per class);
    uncertainty: float32 per-pixel std over the ensemble (None when ``ensemble_size == 1``);
    processing_masks: bool arrays (R, R), the masks at the processing resolution before resizing back (what the
    paper's numbers are computed on);
    frame_scores: per image, each frame-level score (:mod:`leafseg.pipelines.frame_decision`);
    cleared: per image, whether the frame-level decision emptied its mask (all False without a decision).
    """

    masks: list[np.ndarray]
    probabilities: list[np.ndarray]
    uncertainty: list[np.ndarray] | None
    processing_masks: list[np.ndarray] | None = None
    frame_scores: list[dict[str, float]] | None = None
    cleared: list[bool] | None = None


class SegmentationImageProcessor:
    """Resize/normalise in, resize/threshold out, for pipelines working at a square ``resolution``."""

    def __init__(self, resolution: int):
        self.resolution = int(resolution)

    @staticmethod
    def validate(image) -> torch.Tensor:
        """One image -> a (3, H, W) tensor, uint8 (0..255) or float in [0, 1]. Accepted, and nothing else (a wrong
        range is refused rather than segmented as if it were right): PIL images; numpy arrays (H, W), (H, W, 3) or
        (H, W, 4) and torch tensors (3, H, W), either uint8 or floating point in [0, 1]."""
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        if isinstance(image, np.ndarray):
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=-1)
            if image.ndim != 3 or image.shape[-1] not in (3, 4):
                raise ValueError(f"expected an (H, W, 3) image array, got shape {image.shape}")
            image = torch.from_numpy(np.array(image[..., :3])).permute(2, 0, 1)  # a writable copy
        elif isinstance(image, torch.Tensor):
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(f"expected a (3, H, W) image tensor, got shape {tuple(image.shape)}")
        else:
            raise TypeError(f"unsupported image type {type(image).__name__} (PIL image, numpy array or torch tensor)")
        if image.dtype == torch.uint8:
            return image
        if not image.is_floating_point():
            raise ValueError(f"unsupported image dtype {image.dtype}: give uint8 (0..255) or float in [0, 1]")
        lo, hi = float(image.min()), float(image.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"float image values must be in [0, 1], got [{lo:.4g}, {hi:.4g}] (divide 0..255 images "
                             "by 255, or pass them as uint8)")
        return image.float()

    @classmethod
    def to_tensor(cls, image) -> torch.Tensor:
        """One image -> float (3, H, W) in [0, 1] (see :meth:`validate` for what is accepted)."""
        image = cls.validate(image)
        return image.float() / 255.0 if image.dtype == torch.uint8 else image

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """A validated (3, H, W) image -> float (3, R, R) in [0, 1]. 8-bit images are resized exactly as training
        resizes them (PIL bilinear on the 8-bit image, :func:`leafseg.data.io.resize_image`), so a model sees the
        same pixels at inference as in its validation; float images with antialiased bilinear interpolation."""
        r = self.resolution
        if tuple(image.shape[-2:]) == (r, r):
            return image.float() / 255.0 if image.dtype == torch.uint8 else image
        if image.dtype == torch.uint8:
            resized = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((r, r), Image.BILINEAR)
            return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float() / 255.0
        return F.interpolate(image[None], size=(r, r), mode="bilinear", align_corners=False, antialias=True)[0]

    def preprocess(self, images) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """One image or a list (or a (B, 3, H, W) tensor) -> (B, 3, R, R) in [-1, 1], plus the original sizes."""
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        tensors = [self.validate(im) for im in images]
        sizes = [tuple(t.shape[-2:]) for t in tensors]
        batch = torch.stack([self.resize(t) for t in tensors])
        return batch.clamp(0, 1) * 2 - 1, sizes

    @staticmethod
    def postprocess(prob: torch.Tensor, std: torch.Tensor | None, sizes: list[tuple[int, int]],
                    threshold: float, decision: FrameDecision | None = None) -> SegmentationPipelineOutput:
        """(B, R, R) probabilities (and ensemble std) -> per-image arrays at each input's own size; ``decision``
        empties the masks of the frames it clears (the probabilities stay as they were)."""
        check_threshold(threshold)
        prob = prob.float().cpu()
        scores = frame_scores(prob, threshold)
        cleared = decision.clears(scores) if decision is not None else np.zeros(len(prob), bool)
        masks, probabilities, uncertainty = [], [], []
        for i, (hh, ww) in enumerate(sizes):
            p = F.interpolate(prob[i][None, None], size=(hh, ww), mode="bilinear", align_corners=False)[0, 0]
            masks.append((p > threshold).numpy() & (not cleared[i]))
            probabilities.append(p.numpy().astype(np.float32))
            if std is not None:
                s = F.interpolate(std[i].float().cpu()[None, None], size=(hh, ww), mode="bilinear",
                                  align_corners=False)[0, 0]
                uncertainty.append(s.numpy().astype(np.float32))
        kept = torch.from_numpy(~cleared)[:, None, None]
        return SegmentationPipelineOutput(masks=masks, probabilities=probabilities,
                                          uncertainty=uncertainty if std is not None else None,
                                          processing_masks=list(((prob > threshold) & kept).numpy()),
                                          frame_scores=[{k: float(v[i]) for k, v in scores.items()}
                                                        for i in range(len(prob))],
                                          cleared=[bool(c) for c in cleared])

    @staticmethod
    def postprocess_labels(prob: torch.Tensor, std: torch.Tensor | None, sizes: list[tuple[int, int]]
                           ) -> SegmentationPipelineOutput:
        """(B, K + 1, R, R) class probabilities (and ensemble std (B, R, R)) -> per image the class probabilities at
        the input's own size (bilinear) and the label map of their argmax (uint8 class indices)."""
        prob = prob.float().cpu()
        masks, probabilities, uncertainty = [], [], []
        for i, (hh, ww) in enumerate(sizes):
            p = F.interpolate(prob[i][None], size=(hh, ww), mode="bilinear", align_corners=False)[0]
            masks.append(p.argmax(0).to(torch.uint8).numpy())
            probabilities.append(p.numpy().astype(np.float32))
            if std is not None:
                u = F.interpolate(std[i].float().cpu()[None, None], size=(hh, ww), mode="bilinear",
                                  align_corners=False)[0, 0]
                uncertainty.append(u.numpy().astype(np.float32))
        return SegmentationPipelineOutput(masks=masks, probabilities=probabilities,
                                          uncertainty=uncertainty if std is not None else None,
                                          processing_masks=list(prob.argmax(1).to(torch.uint8).numpy()),
                                          frame_scores=None, cleared=[False] * len(prob))
