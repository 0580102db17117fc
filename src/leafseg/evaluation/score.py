"""``leafseg score``: any folder of predicted masks against a folder of ground-truth masks, with the metrics, empty
rules, confidence intervals, subgroups, report and figures of ``leafseg evaluate`` (what nnU-Net's
``compute_metrics_on_folder`` is for nnU-Net), so that masks from any tool are scored by one rule.

Predictions are matched to ground truth by name: ``<stem>.*`` or leafseg predict's ``<stem>_mask.*``; 2D masks (PNG,
JPG, TIFF ...) are read by the same encoding rules as training masks, NIfTI/DICOM volumes are scored as 3D cases in
the ground truth's voxel spacing (mm).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import __version__
from .. import data as D
from ..files import prepare_output, write_csv, write_json, write_text
from ..metrics import MultiClassMetrics, SegmentationMetrics
from .evaluate import _write_figures, figure_cases, group_summary, read_group_table
from ..figures import OVERLAY_SIZE, save_overlay
from .report import report_markdown

#: outputs of ``leafseg predict`` beside its masks, never predictions themselves
PREDICT_EXTRAS = ("_overlay", "_uncertainty", "_probability")


def match_predictions(pred_dir: Path, gt_dir: Path, missing_as_empty: bool = False
                      ) -> tuple[list[tuple[str, Path | None, Path]], list[str]]:
    """``(name, prediction or None, ground truth)`` for every ground-truth mask in natural name order, and the
    names of predictions without ground truth. A missing prediction is an error naming them, unless
    ``missing_as_empty`` (then it is scored as an empty mask)."""
    truths = {D.file_stem(p): p for p in D.list_images(gt_dir)}
    if not truths:
        raise ValueError(f"{gt_dir}: no ground-truth masks ({', '.join(D.IMAGE_EXTENSIONS)}, NIfTI, DICOM)")
    preds: dict[str, Path] = {}
    for p in D.list_images(pred_dir):
        stem = D.file_stem(p)
        if stem.endswith(PREDICT_EXTRAS) and stem not in truths:
            continue
        name = stem[:-len("_mask")] if stem.endswith("_mask") and stem not in truths else stem
        if name in preds:
            raise ValueError(f"{p}: a second prediction for {name!r} (also {preds[name]}); keep one per case")
        preds[name] = p
    missing = sorted(set(truths) - set(preds), key=D.sort_key)
    if missing and not missing_as_empty:
        raise FileNotFoundError(
            f"{pred_dir}: no prediction for {len(missing)} of {len(truths)} ground-truth mask(s), e.g. "
            f"{', '.join(missing[:5])} (expected <name>.png or <name>_mask.png, ...); pass --missing-as-empty to "
            "score them as empty masks")
    extra = sorted(set(preds) - set(truths), key=D.sort_key)
    return [(name, preds.get(name), truths[name]) for name in sorted(truths, key=D.sort_key)], extra


def read_case_mask(path: Path, labels: D.LabelTable | None = None) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """A bool mask (2D, or 3D for a volume) -- with a multi-class ``labels`` table a label map of class indices --
    and, for a volume, its voxel spacing."""
    if D.is_volume(path):
        volume = D.read_volume(path)
        read = (lambda s: labels.indices(s, path)) if labels is not None else (lambda s: D.mask_from_array(s, path))
        return np.stack([read(s) for s in volume.slices(2)], axis=2), tuple(volume.spacing)
    return (D.load_label_map(path, labels) if labels is not None else D.load_mask(path)), None


def score_labels(labels: str | Path | None, gt_dir: Path) -> D.LabelTable | None:
    """The label table to score by: ``labels``, else one in the ground-truth folder or the folder above it (a
    dataset root holding ``masks/`` and ``labels.json``); None (binary) when there is none or it names one
    structure."""
    if labels is not None:
        table = D.read_label_table(labels)
    else:
        found = D.find_label_table(gt_dir) or D.find_label_table(gt_dir.parent)
        table = D.read_label_table(found) if found else None
    return None if table is None or table.binary else table


def score(pred_dir: str | Path, gt_dir: str | Path, output: str | Path | None = None,
          images_dir: str | Path | None = None, spacing: tuple[float, float] | None = None,
          groups: str | None = None, worst_k: int = 8, missing_as_empty: bool = False,
          overwrite: bool = False, overlay_size: int | None = OVERLAY_SIZE, labels: str | Path | None = None) -> dict:
    """Score ``pred_dir`` against ``gt_dir`` into ``output`` (default ``score-<pred folder name>`` beside it):
    ``per_image.csv``, ``summary.json``, ``report.md``; with ``images_dir`` (the images, by the same names) also
    ``overlays/`` and the figures of ``leafseg evaluate``. ``spacing`` gives 2D distances in its unit (volumes use
    their headers').

    Args:
        pred_dir: predicted masks, ``<name>.*`` or ``<name>_mask.*``, from any tool.
        gt_dir: ground-truth masks, ``<name>.*``.
        output: the results folder (default ``score-<pred folder>`` beside it).
        images_dir: the images, for overlays and figures (optional).
        spacing: pixel spacing of 2D masks for HD95/ASSD.
        groups: a ``name,group`` CSV of subgroups.
        worst_k: worst cases listed and drawn.
        missing_as_empty: score a ground truth without a prediction as an empty mask (default: an error).
        overwrite: empty a non-empty output folder leafseg wrote first.
        overlay_size: the longest side of each overlay panel (None or 0: full size).
        labels: the label table of multi-class masks (``labels.json`` / nnU-Net ``dataset.json``; default: one in
            ``gt_dir`` or its parent): metrics per structure and their mean, as ``evaluate`` reports them.

    Returns:
        ``{"summary": dict, "output": Path}``, as :func:`leafseg.evaluate` returns.

    Raises:
        FileNotFoundError: predictions missing (named). ValueError: a mask of another size than its ground truth,
            two predictions for one case, an unreadable mask (each names the file).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    cases, extra = match_predictions(pred_dir, gt_dir, missing_as_empty)
    label_table = score_labels(labels, gt_dir)
    names = label_table.foreground if label_table is not None else None
    table = read_group_table(groups) if groups is not None else None  # checked before any work
    images = {D.file_stem(p): p for p in D.list_images(images_dir)} if images_dir else {}
    out = prepare_output(Path(output) if output else pred_dir.parent / f"score-{pred_dir.name}", overwrite,
                         inputs=[pred_dir, gt_dir, *([images_dir] if images_dir else [])])
    started = time.time()
    metrics = MultiClassMetrics(names, spacing) if names else SegmentationMetrics(spacing=spacing)
    for name, pred_path, gt_path in cases:
        gt, volume_spacing = read_case_mask(gt_path, label_table)
        pred = read_case_mask(pred_path, label_table)[0] if pred_path is not None else np.zeros_like(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"{pred_path}: mask is {'x'.join(map(str, pred.shape[::-1]))} but its ground truth "
                             f"{gt_path} is {'x'.join(map(str, gt.shape[::-1]))}")
        if volume_spacing is not None:
            metrics.add(pred, gt, name, volume_spacing)
        else:
            metrics.update(pred, gt, name=name, spacing=spacing)
        if name in images and gt.ndim == 2:
            image = D.load_image(images[name])
            save_overlay(out / "overlays" / f"{name}.png", name, image, gt, pred, None, overlay_size, names)
    rows = metrics.rows()
    write_csv(rows, out / "per_image.csv")
    cases_shown = _write_figures(out, rows, worst_k, False) if images else {"grid": [], "false_positives": [],
                                                                             "worst": []}
    worst = figure_cases(rows, worst_k=worst_k)["worst"]  # evaluate's rule: ties by object size, not by name
    summary = {
        "kind": "score", "pred": str(pred_dir.resolve()), "gt": str(gt_dir.resolve()),
        "images": str(Path(images_dir).resolve()) if images_dir else None, "n_images": len(rows),
        "missing_predictions_scored_empty": [n for n, p, _ in cases if p is None],
        "n_extra_predictions": len(extra), "extra_predictions": extra[:50],
        "leafseg": __version__, "wall_s": round(time.time() - started, 1),
        "labels": label_table.to_dict() if label_table is not None else None,
        "metrics": metrics.summary(),
        "worst_cases": [{"name": r["name"], "dice": r["dice"], "iou": r["iou"]} for r in worst],
        "figures": {"overlays": "overlays/<name>.png: image | ground truth | prediction" if images else None,
                    "grid": "grid.png" if cases_shown["grid"] else None,
                    "worst_cases": "worst_cases.png" if cases_shown["worst"] else None,
                    "false_positives": "false_positives.png" if cases_shown["false_positives"] else None},
    }
    if table is not None:
        summary.update(group_summary(metrics, table, [r["name"] for r in rows], groups))
    write_json(summary, out / "summary.json")
    write_text(report_markdown(summary), out / "report.md")
    return {"summary": summary, "output": out}
