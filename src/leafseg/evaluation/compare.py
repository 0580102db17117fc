"""Two evaluations of the same images compared image by image: the mean per-image difference A - B with a paired
bootstrap CI (the images resampled together), and on how many images each one wins.

Two models' own CIs overlap on almost any test set of a hundred images; the paired CI removes the spread that comes
from the images themselves (an easy frame is easy for both), so it says whether A beats B *on these images*. The
inputs are what ``leafseg evaluate`` and ``leafseg score`` write: a folder with ``per_image.csv`` (or the file).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from ..files import same_folder
from ..metrics import bootstrap_mean_ci

HIGHER_IS_BETTER = {"dice": True, "iou": True, "precision": True, "recall": True, "specificity": True,
                    "hd95": False, "assd": False}


def per_image_csv(path: str | Path) -> Path:
    """The ``per_image.csv`` of an evaluation folder, or the file itself; a clear error when neither exists."""
    path = Path(path)
    csv_file = path / "per_image.csv" if path.is_dir() else path
    if not csv_file.is_file():
        raise FileNotFoundError(f"{csv_file}: no per_image.csv here (give a folder written by `leafseg evaluate` or "
                                "`leafseg score`, or the CSV itself)")
    return csv_file


def read_per_image(path: str | Path, metric: str = "dice", digits: int | None = None) -> dict[str, float | None]:
    """One metric per image name from an evaluation's ``per_image.csv``; None where it is undefined (an empty cell or
    nan: e.g. HD95 when a mask is empty); rounded to ``digits`` decimals if given (as records keep them)."""
    csv_file = per_image_csv(path)
    with open(csv_file, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "name" not in reader.fieldnames or metric not in reader.fieldnames:
            raise ValueError(f"{csv_file}: needs the columns 'name' and '{metric}'; it has {reader.fieldnames}")
        cells = {row["name"]: float(row[metric] or "nan") for row in reader}
    if digits is not None:
        cells = {name: round(value, digits) for name, value in cells.items()}
    return {name: None if math.isnan(value) else value for name, value in cells.items()}


def _what_was_scored(path: str | Path) -> dict | None:
    """The data and split an evaluation folder's summary.json names (None for a bare CSV or an older folder). A
    `leafseg score` folder names no data root or split: its ground-truth folder stands for the data there."""
    summary = per_image_csv(path).parent / "summary.json"
    if not summary.is_file():
        return None
    s = json.loads(summary.read_text())
    if s.get("kind") == "score":
        return {"kind": "score", "data": s.get("gt"), "split": None, "split_file": None}
    return {"kind": "evaluate", **{k: s.get(k) for k in ("data", "split", "split_file")}}


def compare_values(a: dict[str, float | None], b: dict[str, float | None], higher_is_better: bool = True,
                   n_bootstrap: int = 10000, seed: int = 0, ci: float = 0.95) -> dict:
    """A - B over the images both define: mean difference, its paired percentile-bootstrap CI, wins and ties.

    Images only one side scored, or where either value is undefined, are counted and left out. A "win" for A is an
    image where A is better by the metric's direction (``higher_is_better``)."""
    shared = sorted(k for k in a.keys() & b.keys() if a[k] is not None and b[k] is not None)
    if not shared:
        raise ValueError(f"no image is scored in both evaluations (A: {len(a)} images, B: {len(b)}): are they of "
                         "the same data?")
    d = np.array([a[k] - b[k] for k in shared])
    better = d > 0 if higher_is_better else d < 0
    worse = d < 0 if higher_is_better else d > 0
    interval = bootstrap_mean_ci(d, n_bootstrap=n_bootstrap, seed=seed, ci=ci)
    return {"n": len(shared), "mean_a": float(np.mean([a[k] for k in shared])),
            "mean_b": float(np.mean([b[k] for k in shared])), "difference": float(d.mean()),
            "ci_low": interval["ci_low"], "ci_high": interval["ci_high"], "ci": ci, "n_bootstrap": n_bootstrap,
            "a_better": int(better.sum()), "b_better": int(worse.sum()), "equal": int((d == 0).sum()),
            "only_in_a": sorted(a.keys() - b.keys()), "only_in_b": sorted(b.keys() - a.keys()),
            "undefined": sorted(k for k in a.keys() & b.keys() if a[k] is None or b[k] is None)}


def base_metric(metric: str) -> str:
    """``dice_<structure>`` (and iou_, hd95_) of a multi-class evaluation -> the metric it is."""
    return metric.split("_", 1)[0] if metric.startswith(("dice_", "iou_", "hd95_")) else metric


def compare(a: str | Path, b: str | Path, metric: str = "dice", n_bootstrap: int = 10000, seed: int = 0,
            ci: float = 0.95) -> dict:
    """Evaluation A against evaluation B (folders or ``per_image.csv`` files), paired by image name.

    Returns :func:`compare_values`' numbers plus the metric, both paths and, where the folders' ``summary.json`` say
    it, whether both scored the same data and split (``same_data``: a pairing of two datasets' images that happen to
    share names would be meaningless)."""
    base = base_metric(metric)
    if base not in HIGHER_IS_BETTER:  # dice_<structure> etc.: one structure of a multi-class evaluation
        raise ValueError(f"metric {metric!r}: choose one of {sorted(HIGHER_IS_BETTER)}, or for a multi-class "
                         "evaluation dice_<structure>, iou_<structure> or hd95_<structure>")
    out = compare_values(read_per_image(a, metric), read_per_image(b, metric), HIGHER_IS_BETTER[base],
                         n_bootstrap, seed, ci)
    scored_a, scored_b = _what_was_scored(a), _what_was_scored(b)
    same = None  # unknown: a bare CSV, or an `evaluate` folder against a `score` folder (a data root and split
    # against a folder of masks: they may well be the same images, which nothing here can tell)
    if scored_a is not None and scored_b is not None and scored_a["kind"] == scored_b["kind"]:
        data_a, data_b = scored_a["data"], scored_b["data"]
        same = scored_a["split"] == scored_b["split"] and (
            data_a == data_b or (None not in (data_a, data_b) and same_folder(data_a, data_b)))
    return {"metric": metric, "a": str(a), "b": str(b), "scored_a": scored_a, "scored_b": scored_b,
            "same_data": same, **out}


def compare_text(result: dict) -> str:
    """What ``leafseg compare`` prints: one paragraph a reader can quote."""
    m, pct = result["metric"], 100 * result["ci"]
    scale, unit = (100, " points") if HIGHER_IS_BETTER[base_metric(m)] else (1, "")  # HD95 / ASSD: in their own units
    lines = [f"A: {result['a']}", f"B: {result['b']}",
             f"{m} over {result['n']} images scored by both: A {result['mean_a']:.4f}, B {result['mean_b']:.4f}; "
             f"A - B {scale * result['difference']:+.2f}{unit} [{pct:.0f}% paired bootstrap CI "
             f"{scale * result['ci_low']:+.2f}, {scale * result['ci_high']:+.2f}]",
             f"A better on {result['a_better']} images, B better on {result['b_better']}, equal on "
             f"{result['equal']}"]
    lo, hi = result["ci_low"], result["ci_high"]
    better = "A" if (lo > 0) == HIGHER_IS_BETTER[base_metric(m)] else "B"
    lines.append(f"{better} is better on these images (the CI excludes 0)" if lo > 0 or hi < 0 else
                 "no difference shown on these images (the CI includes 0)")
    for key, what in (("only_in_a", "only in A"), ("only_in_b", "only in B"), ("undefined", f"{m} undefined")):
        if result[key]:
            names = ", ".join(result[key][:5]) + (" ..." if len(result[key]) > 5 else "")
            lines.append(f"left out, {what}: {len(result[key])} ({names})")
    if result["same_data"] is False:
        lines.append(f"warning: A scored {result['scored_a']}, B scored {result['scored_b']}: not the same data and "
                     "split, so images paired by name may be different images")
    return "\n".join(lines)
