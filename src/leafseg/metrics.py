"""Segmentation metrics: per-image pure functions and small accumulator classes (as MONAI has them); binary masks
here, label maps of several structures at the end (:func:`class_dice`, :class:`MultiClassMetrics`).

Inputs are binary masks of one image, shape (H, W) (any N-d shape works for the pure functions), as numpy arrays or
torch tensors, dtype bool or with values in {0, 1}; anything else is rejected (binarise first). "Foreground" is True.
With P = predicted foreground, G = ground-truth foreground and TP, FP, FN, TN the pixel counts:

    dice        = 2 TP / (2 TP + FP + FN) = 2|P∩G| / (|P| + |G|)
    iou         = TP / (TP + FP + FN)     = |P∩G| / |P∪G|
    precision   = TP / (TP + FP)
    recall      = TP / (TP + FN)          (sensitivity)
    specificity = TN / (TN + FP)

Empty / zero-denominator rules (the accumulator counts every case):
    dice, iou   P and G both empty -> ``empty_score`` (default 1.0: a correct "nothing here" is perfect);
                exactly one of them empty -> 0.0 (follows from the formula, never nan).
    precision   P empty (TP + FP = 0) -> nan.
    recall      G empty (TP + FN = 0) -> nan.
    specificity G covers the whole image (TN + FP = 0) -> nan.
    hd95, assd  both empty -> 0.0; exactly one empty -> nan.

Surface distances follow MONAI 1.6.1 (read from the wheel's source):
  * edges (monai/metrics/utils.py ``get_mask_edges``, spacing=None path): ``mask XOR binary_erosion(mask)`` with
    scipy's *default* structuring element, i.e. the 4-connected cross (``generate_binary_structure(ndim, 1)``), not
    the full 3x3 square; pixels outside the image count as background (erosion border_value=0, MONAI's crop pads
    with zeros), so a mask touching the image border has an edge there. ``spacing`` does not change the edges.
  * distances (utils.py ``get_surface_distance``, euclidean): for every edge pixel of one mask, the Euclidean
    distance to the nearest *edge* pixel of the other (edge-to-edge, not edge-to-region), coordinates scaled by
    ``spacing`` (MONAI uses a KD-tree on scaled coordinates or ``distance_transform_edt(~edges, sampling=spacing)``;
    both are exact, we use the latter).
  * hd95 (hausdorff_distance.py ``compute_hausdorff_distance``, percentile=95, directed=False): the 95th percentile
    (linear interpolation, ``torch.quantile`` == ``np.percentile``) of each directed set of distances, then the
    *max of the two* (not the percentile of the pooled set).
  * assd (surface_distance.py ``compute_average_surface_distance`` with symmetric=True; note MONAI's default is
    symmetric=False): the mean of the *pooled* distances of both directions, i.e. (sum d(P->G) + sum d(G->P)) /
    (|edges P| + |edges G|), not the mean of the two directed means.
  Units: pixels when spacing is None, else the units of ``spacing`` = (sy, sx) (e.g. mm).
  Checked against MONAI 1.6.1 itself on 300 random mask pairs with and without anisotropic spacing: equal to its
  float32 precision. Deliberate deviation on empty masks: MONAI gives nan (hd95 and assd) when both are empty and,
  when exactly one is empty, nan (hd95) / inf (assd); we give 0.0 for both-empty and nan (counted) for one-empty.

The LEAF paper's numbers (:func:`paper_dice`, :func:`paper_iou`, :class:`PaperMetrics`) are these same foreground
scores with one difference, the empty rule (both empty -> 0), computed at the processing resolution: that is what
the authors' torchmetrics calls give on their single-channel input. Use them to compare with the paper's tables.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "dice", "iou", "precision", "recall", "specificity", "surface_distances", "hd95", "assd",
    "SegmentationMetrics", "paper_dice", "paper_iou", "PaperMetrics", "bootstrap_mean_ci",
    "class_dice", "mean_class_dice", "MultiClassMetrics",
]

FOREGROUND_METRICS = ("dice", "iou", "precision", "recall", "specificity", "hd95", "assd")
CI_METRICS = ("dice", "iou", "hd95", "assd")  # those reported with a bootstrap CI of the mean


# ----------------------------------------------------------------------------------------------- per-image metrics
def _as_mask(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype == bool:
        return a
    if a.size and np.any((a != 0) & (a != 1)):
        raise ValueError("masks must be boolean or contain only 0 and 1 (binarise probabilities first)")
    return a != 0


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_mask(pred), _as_mask(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    return p, g


def _counts(p: np.ndarray, g: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(g)) - tp
    return tp, fp, fn, p.size - tp - fp - fn


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def dice(pred: Any, gt: Any, empty_score: float = 1.0) -> float:
    """Foreground Dice 2|P∩G|/(|P|+|G|); both empty -> ``empty_score``; exactly one empty -> 0.0."""
    tp, fp, fn, _ = _counts(*_pair(pred, gt))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float(empty_score)


def iou(pred: Any, gt: Any, empty_score: float = 1.0) -> float:
    """Foreground IoU |P∩G|/|P∪G|; both empty -> ``empty_score``; exactly one empty -> 0.0."""
    tp, fp, fn, _ = _counts(*_pair(pred, gt))
    return tp / (tp + fp + fn) if tp + fp + fn else float(empty_score)


def precision(pred: Any, gt: Any) -> float:
    """TP/(TP+FP); nan when the prediction is empty."""
    tp, fp, _, _ = _counts(*_pair(pred, gt))
    return _ratio(tp, tp + fp)


def recall(pred: Any, gt: Any) -> float:
    """TP/(TP+FN) (sensitivity); nan when the ground truth is empty."""
    tp, _, fn, _ = _counts(*_pair(pred, gt))
    return _ratio(tp, tp + fn)


def specificity(pred: Any, gt: Any) -> float:
    """TN/(TN+FP); nan when the ground truth covers the whole image (no negatives)."""
    _, fp, _, tn = _counts(*_pair(pred, gt))
    return _ratio(tn, tn + fp)


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    s = tuple(float(v) for v in np.broadcast_to(np.asarray(spacing, dtype=float), (ndim,)))
    if not all(v > 0 for v in s):
        raise ValueError(f"spacing must be positive, got {spacing}")
    return s


def _edges(mask: np.ndarray) -> np.ndarray:
    # MONAI get_mask_edges: mask ^ binary_erosion(mask), scipy's default (cross) structure, outside = background.
    return mask ^ ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))


def _surface_distances(p: np.ndarray, g: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    sp = _spacing(spacing, p.ndim)
    # Crop to the union's bounding box plus a 1-pixel margin (as MONAI does): same edges and distances, less work.
    idx = np.nonzero(p | g)
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in idx)
    ep, eg = _edges(p[box]), _edges(g[box])
    to_g = ndimage.distance_transform_edt(~eg, sampling=sp)[ep]
    to_p = ndimage.distance_transform_edt(~ep, sampling=sp)[eg]
    return to_g, to_p


def surface_distances(pred: Any, gt: Any, spacing: float | Sequence[float] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Directed edge-to-edge distances (pred edges -> nearest gt edge, gt edges -> nearest pred edge).

    Both arrays are empty when both masks are empty; when exactly one is empty the distances are undefined and
    this raises ValueError (``hd95``/``assd`` return nan instead).
    """
    p, g = _pair(pred, gt)
    if p.any() != g.any():
        raise ValueError("surface distances are undefined when exactly one mask is empty")
    if not p.any():
        return np.zeros(0), np.zeros(0)
    return _surface_distances(p, g, spacing)


def _hd95_assd(p: np.ndarray, g: np.ndarray, spacing) -> tuple[float, float]:
    pa, ga = bool(p.any()), bool(g.any())
    if not pa and not ga:
        return 0.0, 0.0
    if pa != ga:
        return math.nan, math.nan
    to_g, to_p = _surface_distances(p, g, spacing)
    hd = max(float(np.percentile(to_g, 95)), float(np.percentile(to_p, 95)))
    return hd, float((to_g.sum() + to_p.sum()) / (to_g.size + to_p.size))


def hd95(pred: Any, gt: Any, spacing: float | Sequence[float] | None = None) -> float:
    """MONAI HausdorffDistanceMetric(percentile=95): max over both directions of the 95th-percentile edge distance.

    Pixels if ``spacing`` is None, else units of ``spacing`` = (sy, sx). Both empty -> 0.0; one empty -> nan.
    """
    return _hd95_assd(*_pair(pred, gt), spacing)[0]


def assd(pred: Any, gt: Any, spacing: float | Sequence[float] | None = None) -> float:
    """Average symmetric surface distance (MONAI SurfaceDistanceMetric(symmetric=True)): mean of the pooled
    distances of both directions. Both empty -> 0.0; one empty -> nan."""
    return _hd95_assd(*_pair(pred, gt), spacing)[1]


# ------------------------------------------------------------------------------------------- paper-compatible
def paper_dice(pred: Any, gt: Any) -> float:
    """The "Dice" of the LEAF paper's tables, for one image: foreground Dice with *both-empty scored 0*.

    The authors' code updates torchmetrics ``GeneralizedDiceScore(num_classes=2, weight_type="linear")`` with
    (B, 1, H, W) integer masks. With that single channel the score is, per image, 2|P∩G|/(|P|+|G|) (the linear
    weight cancels), and 0 when both masks are empty (torchmetrics 1.6.1, the authors' pin, and later versions).
    Feed masks at the processing resolution (256 x 256 in the paper), as their validation does.
    """
    return dice(pred, gt, empty_score=0.0)


def paper_iou(pred: Any, gt: Any) -> float:
    """Per-image term of the paper's mIoU: foreground IoU with both-empty scored 0 (torchmetrics 1.6.1
    ``MeanIoU(num_classes=2)`` on (B, 1, H, W) integer masks; versions >= 1.7 drop both-empty images instead)."""
    return iou(pred, gt, empty_score=0.0)


class PaperMetrics:
    """The two numbers the LEAF paper reports, computed as the authors' validation computes them.

    ``dice``: mean over images of :func:`paper_dice`. ``miou_batch_mean``: the authors average torchmetrics'
    MeanIoU per validation batch and then over batches, so it is the mean over consecutive batches of
    ``batch_size`` images (update order; the last may be smaller) of the batch's mean :func:`paper_iou`.
    Update with masks at the processing resolution (the prediction before it is resized back to the image's size,
    the ground truth resized to the processing resolution as training resizes it).
    """

    definition = (
        "Per-image foreground Dice / IoU at the processing resolution, an image whose prediction and ground truth "
        "are both empty scoring 0: what torchmetrics GeneralizedDiceScore(num_classes=2, weight_type='linear') and "
        "MeanIoU(num_classes=2) (1.6.1, the authors' pin) give on (B, 1, H, W) integer masks as the authors' code "
        "feeds them. dice: mean over images. miou_batch_mean: mean over batches of batch_size images of the batch "
        "mean IoU (it depends on the order of the images when batches differ, e.g. when the images without an "
        "object fall into one batch; miou_image_mean is the same IoU averaged per image, which does not). These "
        "are the numbers to put beside the paper's Table 1."
    )
    ORDER_TOLERANCE = 0.01  # batch and image means further apart than this: the order of the images matters

    def __init__(self, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._dice: list[float] = []
        self._iou: list[float] = []
        self._both_empty = 0
        self.resolution: tuple[int, ...] | None = None

    def update(self, pred: Any, gt: Any) -> None:
        """One image (H, W) at the processing resolution."""
        p, g = _pair(pred, gt)
        self.resolution = p.shape
        self._dice.append(paper_dice(p, g))
        self._iou.append(paper_iou(p, g))
        self._both_empty += int(not p.any() and not g.any())

    def result(self) -> dict:
        n = len(self._dice)
        batches = [self._iou[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        batch_means = [float(np.mean(b)) for b in batches]
        miou_batch = float(np.mean(batch_means)) if n else math.nan
        miou_image = float(np.mean(self._iou)) if n else math.nan
        warning = None
        if n and abs(miou_batch - miou_image) > self.ORDER_TOLERANCE:
            warning = (f"the batch mean of IoU ({miou_batch:.4f}) differs from the per-image mean ({miou_image:.4f}): "
                       f"its {len(batches)} batches of up to {self.batch_size} images are unequal (batch means "
                       f"{min(batch_means):.3f} to {max(batch_means):.3f}; the last holds {len(batches[-1])}), so "
                       f"the authors' number depends on the order of the images")
        return {
            "dice": float(np.mean(self._dice)) if n else math.nan,
            "miou_batch_mean": miou_batch, "miou_image_mean": miou_image, "batch_order_warning": warning,
            "n_images": n, "both_empty_scored_0": self._both_empty,
            "resolution": list(self.resolution) if self.resolution else None,
            "batch_size": self.batch_size, "n_batches": len(batches), "definition": self.definition,
        }


# ----------------------------------------------------------------------------------------------------- accumulator
class SegmentationMetrics:
    """Accumulates per-image foreground metrics (see the module docstring for every definition and empty rule).

    ``spacing`` (sy, sx) sets the unit of hd95/assd (pixels if None). The paper-compatible numbers are kept apart
    (:class:`PaperMetrics`), because they are computed on the processing-resolution masks.
    """

    def __init__(self, spacing: float | Sequence[float] | None = None, empty_score: float = 1.0):
        self.spacing, self.empty_score = spacing, empty_score
        self._rows: list[dict] = []

    def __len__(self) -> int:
        return len(self._rows)

    def update(self, pred: Any, gt: Any, name: str | Iterable[str] | None = None,
               spacing: float | Sequence[float] | None = None) -> None:
        """Add one image (H, W) or a batch (B, H, W); ``name`` is a string or one per image (default: the index)."""
        p, g = _pair(pred, gt)
        if p.ndim == 2:
            p, g, names = p[None], g[None], [name]
        elif p.ndim == 3:
            if name is None or isinstance(name, str):
                names = [name] if len(p) == 1 else [None if name is None else f"{name}_{i}" for i in range(len(p))]
            else:
                names = list(name)
            if len(names) != len(p):
                raise ValueError(f"{len(names)} names for {len(p)} images")
        else:
            raise ValueError(f"expected (H, W) or (B, H, W) masks, got shape {p.shape}")
        for pi, gi, ni in zip(p, g, names):
            self._add(pi, gi, ni, self.spacing if spacing is None else spacing)

    def add(self, pred: Any, gt: Any, name: str | None = None, spacing: float | Sequence[float] | None = None
            ) -> None:
        """Add one case of any dimension (a 3D volume: metrics over its voxels, distances in ``spacing`` units)."""
        self._add(*_pair(pred, gt), name, self.spacing if spacing is None else spacing)

    def _add(self, p: np.ndarray, g: np.ndarray, name: str | None, spacing) -> None:
        tp, fp, fn, tn = _counts(p, g)
        fg = tp + fp + fn
        hd, asd = _hd95_assd(p, g, spacing)
        self._rows.append({
            "name": str(len(self._rows)) if name is None else str(name),
            "dice": 2 * tp / (tp + fg) if fg else float(self.empty_score),
            "iou": tp / fg if fg else float(self.empty_score),
            "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "hd95": hd, "assd": asd,
            "gt_empty": tp + fn == 0, "pred_empty": tp + fp == 0,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn, "gt_pixels": tp + fn, "pred_pixels": tp + fp,
        })

    def rows(self) -> list[dict]:
        """One dict per image, in update order (copies)."""
        return [dict(r) for r in self._rows]

    def subset(self, names: set[str]) -> SegmentationMetrics:
        """The same accumulator over the images named in ``names`` (a subgroup: benign / malignant, a centre)."""
        part = SegmentationMetrics(self.spacing, self.empty_score)
        part._rows = [dict(r) for r in self._rows if r["name"] in names]
        return part

    def summary(self, n_bootstrap: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
        """Aggregate over images.

        Every metric: mean, median, std (sample std, ddof=1; nan below 2 values), n_valid and n_nan, ignoring nan.
        dice, iou, hd95 and assd additionally get a percentile-bootstrap CI of the mean (``n_bootstrap`` resamples of
        the images with replacement, ``numpy.random.default_rng(seed)``; deterministic for a seed). ``pooled`` gives
        the dataset-level (micro) Dice and IoU from summed pixel counts. When some ground truths are empty,
        ``with_object`` gives Dice and IoU (mean, CI) over the images with an object only.
        """
        rows = self._rows
        out: dict[str, Any] = {"n_images": len(rows)}
        rng = np.random.default_rng(seed)
        for key in FOREGROUND_METRICS:
            v = np.array([r[key] for r in rows], dtype=float)
            ok = v[~np.isnan(v)]
            stats = {
                "mean": float(ok.mean()) if ok.size else math.nan,
                "median": float(np.median(ok)) if ok.size else math.nan,
                "std": float(ok.std(ddof=1)) if ok.size > 1 else math.nan,
                "n_valid": int(ok.size), "n_nan": int(v.size - ok.size),
            }
            if key in CI_METRICS:
                stats.update(_bootstrap_ci(ok, n_bootstrap, ci, rng))
            out[key] = stats
        # images with an object only: what a lesion-level reader asks (empty frames score 1 or 0 by rule alone)
        with_object = [r for r in rows if not r["gt_empty"]]
        if len(with_object) < len(rows):
            out["with_object"] = {"n_images": len(with_object)}
            for key in ("dice", "iou"):
                v = np.array([r[key] for r in with_object], dtype=float)
                out["with_object"][key] = {"mean": float(v.mean()) if v.size else math.nan,
                                           **_bootstrap_ci(v, n_bootstrap, ci, rng)}
        gt_e = [r["gt_empty"] for r in rows]
        pr_e = [r["pred_empty"] for r in rows]
        out["empty"] = {
            "gt_empty": int(sum(gt_e)), "pred_empty": int(sum(pr_e)),
            "both_empty": int(sum(a and b for a, b in zip(gt_e, pr_e))),
            "gt_empty_pred_not": int(sum(a and not b for a, b in zip(gt_e, pr_e))),
            "pred_empty_gt_not": int(sum(b and not a for a, b in zip(gt_e, pr_e))),
            "empty_score": float(self.empty_score),
        }
        # frames without an object: how often a mask appears on them, and how large (fraction of the frame)
        negatives = [r for r in rows if r["gt_empty"]]
        areas = [r["pred_pixels"] / (r["tp"] + r["fp"] + r["fn"] + r["tn"]) for r in negatives if not r["pred_empty"]]
        out["empty"]["false_positive_rate"] = _ratio(len(areas), len(negatives))
        out["empty"]["false_positive_area_median"] = float(np.median(areas)) if areas else math.nan
        tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
        out["pooled"] = {"dice": _ratio(2 * tp, 2 * tp + fp + fn), "iou": _ratio(tp, tp + fp + fn)}
        sp = self.spacing
        out["units"] = "pixels" if sp is None else f"spacing {[float(v) for v in np.atleast_1d(sp)]}"
        return out


# ---------------------------------------------------------------------------------------------- several structures
def class_dice(pred: Any, gt: Any, num_classes: int) -> list[float]:
    """Label maps (class indices 0..K) -> the Dice of each structure 1..K; a structure in neither map is nan (not
    scored, as nnU-Net counts it)."""
    p, g = np.asarray(pred), np.asarray(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    return [dice(p == k, g == k, empty_score=math.nan) for k in range(1, num_classes + 1)]


def mean_class_dice(pred: Any, gt: Any, num_classes: int) -> float:
    """The mean of :func:`class_dice` over the structures in either map; 1.0 when neither map has any."""
    scores = [v for v in class_dice(pred, gt, num_classes) if not math.isnan(v)]
    return float(np.mean(scores)) if scores else 1.0


class MultiClassMetrics:
    """Per-structure metrics of label maps: one :class:`SegmentationMetrics` per structure, on ``pred == k`` vs
    ``gt == k``. A structure absent from both the prediction and the ground truth of an image is not scored there
    (Dice, IoU, hd95 and assd nan, left out of the means), as nnU-Net counts it. ``summary()`` gives each structure's
    summary under ``classes`` and ``mean_foreground``: for Dice, IoU and hd95 the mean over structures of their
    means (nnU-Net's foreground mean), with a bootstrap CI that resamples images."""

    def __init__(self, names: dict[int, str], spacing: float | Sequence[float] | None = None):
        self.names = dict(names)
        self.spacing = spacing
        self.per_class = {k: SegmentationMetrics(spacing, empty_score=math.nan) for k in self.names}

    def __len__(self) -> int:
        return len(next(iter(self.per_class.values())))

    def update(self, pred: Any, gt: Any, name: str | None = None,
               spacing: float | Sequence[float] | None = None) -> None:
        """Add one label map pair (H, W) (or (B, H, W) with one name per image, or any N-d case)."""
        p, g = np.asarray(pred), np.asarray(gt)
        if p.shape != g.shape:
            raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
        for k, metrics in self.per_class.items():
            metrics.add(p == k, g == k, name, spacing)
            row = metrics._rows[-1]
            if row["gt_empty"] and row["pred_empty"]:
                row["hd95"] = row["assd"] = math.nan

    add = update

    def rows(self) -> list[dict]:
        """One dict per image: its name, the mean Dice / IoU over the structures it scores (nan: none), and each
        structure's
        dice, iou, hd95, gt_pixels and pred_pixels as ``dice_<name>`` etc."""
        per = {k: m.rows() for k, m in self.per_class.items()}
        out = []
        for i in range(len(self)):
            first = per[next(iter(per))][i]
            gt_px = sum(per[k][i]["gt_pixels"] for k in per)
            pred_px = sum(per[k][i]["pred_pixels"] for k in per)
            row = {"name": first["name"], "gt_empty": gt_px == 0, "pred_empty": pred_px == 0,
                   "gt_pixels": gt_px, "pred_pixels": pred_px}
            for key in ("dice", "iou"):
                v = [per[k][i][key] for k in per if not math.isnan(per[k][i][key])]
                row[key] = float(np.mean(v)) if v else math.nan
            for k, name in self.names.items():
                for key in ("dice", "iou", "hd95", "gt_pixels", "pred_pixels"):
                    row[f"{key}_{name}"] = per[k][i][key]
            out.append(row)
        return out

    def subset(self, names: set[str]) -> MultiClassMetrics:
        part = MultiClassMetrics(self.names, self.spacing)
        part.per_class = {k: m.subset(names) for k, m in self.per_class.items()}
        return part

    def summary(self, n_bootstrap: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
        classes = {self.names[k]: m.summary(n_bootstrap, seed, ci) for k, m in self.per_class.items()}
        rng = np.random.default_rng(seed)
        mean_fg = {}
        for key in ("dice", "iou", "hd95"):
            table = np.array([[r[key] for r in m._rows] for m in self.per_class.values()], dtype=float).T
            means = [float(np.nanmean(col)) if np.any(~np.isnan(col)) else math.nan for col in table.T]
            mean_fg[key] = {"mean": float(np.nanmean(means)) if np.any(~np.isnan(means)) else math.nan,
                            **_class_mean_ci(table, n_bootstrap, ci, rng)}
        return {"n_images": len(self), "classes": classes, "mean_foreground": mean_fg,
                "empty_rule": "a structure in neither the prediction nor the ground truth of an image is not scored "
                              "there (nan, left out of the means), as nnU-Net counts it",
                "units": "pixels" if self.spacing is None else
                f"spacing {[float(v) for v in np.atleast_1d(self.spacing)]}"}


def _class_mean_ci(table: np.ndarray, n_bootstrap: int, ci: float, rng: np.random.Generator) -> dict:
    """Bootstrap CI of the mean over structures of their per-image means: images resampled with replacement."""
    n = len(table)
    if n == 0 or n_bootstrap <= 0:
        return {"ci_low": math.nan, "ci_high": math.nan, "ci": ci, "n_bootstrap": n_bootstrap}
    means = np.empty(n_bootstrap)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without a structure: nan, skipped
        for b in range(n_bootstrap):
            means[b] = np.nanmean(np.nanmean(table[rng.integers(0, n, n)], axis=0))
    lo, hi = np.nanpercentile(means, [50 * (1 - ci), 50 * (1 + ci)])
    return {"ci_low": float(lo), "ci_high": float(hi), "ci": ci, "n_bootstrap": n_bootstrap}


def bootstrap_mean_ci(values, n_bootstrap: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """Percentile-bootstrap CI of the mean of ``values`` (``n_bootstrap`` resamples with replacement, seeded so a
    report is reproducible): ``{"ci_low", "ci_high", "ci", "n_bootstrap"}``. Of per-image differences between two
    models on the same images, it is the paired CI of the mean difference."""
    return _bootstrap_ci(np.asarray(values, dtype=np.float64), n_bootstrap, ci, np.random.default_rng(seed))


def _bootstrap_ci(v: np.ndarray, n_bootstrap: int, ci: float, rng: np.random.Generator) -> dict:
    if v.size == 0 or n_bootstrap <= 0:
        return {"ci_low": math.nan, "ci_high": math.nan, "ci": ci, "n_bootstrap": n_bootstrap}
    means = np.empty(n_bootstrap)
    step = max(1, 4_000_000 // v.size)  # bound the (resamples x images) index matrix to ~32 MB
    for s in range(0, n_bootstrap, step):
        k = min(step, n_bootstrap - s)
        means[s:s + k] = v[rng.integers(0, v.size, size=(k, v.size))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - ci), 50 * (1 + ci)])
    return {"ci_low": float(lo), "ci_high": float(hi), "ci": ci, "n_bootstrap": n_bootstrap}
