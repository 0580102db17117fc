"""``leafseg calibrate``: choose a model's frame-level "nothing here" decision on validation evaluations and store
it with the model (:mod:`leafseg.pipelines.frame_decision` says what the decision is and the rule that picks it).

It reads what ``leafseg evaluate`` wrote (``frame_scores.csv``, ``per_image.csv``, ``summary.json``) for validation
frames with an object and validation frames without one; nothing is predicted again. The evaluations must be of
this very model (their checkpoint hash), made without a decision, and not of a test split.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from ..files import write_json
from .evaluate import model_digest


def _read_evaluation(folder: Path, model: Path, digest: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(scores per name, Dice, has-object) of one evaluation folder, checked against the model."""
    summary_path, frames_path = folder / "summary.json", folder / "frame_scores.csv"
    for path in (summary_path, frames_path, folder / "per_image.csv"):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; give folders written by `leafseg evaluate` (frame scores are "
                                    "recorded from this leafseg version on)")
    summary = json.loads(summary_path.read_text())
    if summary.get("checkpoint_sha256") != digest:
        raise ValueError(f"{folder}: evaluates another model (checkpoint hash {summary.get('checkpoint_sha256')!r}, "
                         f"{model} is {digest!r}); evaluate this model again")
    if summary.get("split") == "test":
        raise ValueError(f"{folder}: a test-split evaluation; calibrate on validation frames, judge on test once")
    if (summary.get("inference") or {}).get("frame_decision"):
        raise ValueError(f"{folder}: evaluated with a frame decision applied; evaluate with --no-frame-decision")
    from ..pipelines.frame_decision import FRAME_SCORES

    with open(frames_path, newline="") as f:
        frames = list(csv.DictReader(f))
    with open(folder / "per_image.csv", newline="") as f:
        dice = {r["name"]: float(r["dice"]) for r in csv.DictReader(f)}
    scores = {k: np.array([float(r[k]) for r in frames]) for k in FRAME_SCORES}
    has = np.array([r["has_object"] == "True" for r in frames])
    return scores, np.array([dice[r["name"]] for r in frames]), has


def calibrate_model(model: str | Path, positives: list[str], negatives: list[str], max_drop: float = 0.01,
                    dry_run: bool = False) -> dict:
    """Pick the decision (:func:`leafseg.pipelines.frame_decision.calibrate`) from the frames with an object in
    ``positives`` and the frames without one in ``negatives`` (evaluation folders), and store it in the model's
    ``model_index.json`` (an ONNX export: its manifest) unless ``dry_run``. Returns the calibration."""
    from ..pipelines.frame_decision import FRAME_SCORES, calibrate

    model = Path(model)
    if not 0 <= max_drop < 1:
        raise ValueError(f"--max-drop must be a Dice difference in [0, 1), got {max_drop}")
    config_file = model / ("leafseg_onnx.json" if (model / "leafseg_onnx.json").is_file() else "model_index.json")
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: not a saved leafseg model folder")
    if json.loads(config_file.read_text()).get("labels"):
        raise ValueError(f"{model}: segments several structures; the frame-level decision is for one-structure "
                         "models (a frame with or without the object)")
    digest = model_digest(model)
    pos_scores = {k: [] for k in FRAME_SCORES}
    neg_scores = {k: [] for k in FRAME_SCORES}
    pos_dice = []
    for folder in positives:
        scores, dice, has = _read_evaluation(Path(folder), model, digest)
        for k in FRAME_SCORES:
            pos_scores[k].extend(scores[k][has])
        pos_dice.extend(dice[has])
    for folder in negatives:
        scores, _, has = _read_evaluation(Path(folder), model, digest)
        for k in FRAME_SCORES:
            neg_scores[k].extend(scores[k][~has])
    result = calibrate({k: np.array(v) for k, v in pos_scores.items()}, np.array(pos_dice),
                       {k: np.array(v) for k, v in neg_scores.items()}, max_drop)
    result["positives"], result["negatives"] = [str(Path(p).resolve()) for p in positives], [
        str(Path(n).resolve()) for n in negatives]
    if result["decision"] is not None and not dry_run:
        config = json.loads(config_file.read_text())
        config["frame_decision"] = {**result["decision"].to_config(),
                                    "rule": f"most frames without an object cleared with the mean Dice of frames "
                                            f"with one at most {max_drop:g} lower, on "
                                            f"{result['n_positive']} + {result['n_negative']} validation frames"}
        write_json(config, config_file)
    return result


def calibration_text(result: dict) -> str:
    """The table ``leafseg calibrate`` prints."""
    lines = [f"{result['n_positive']} validation frames with an object (mean Dice {result['positive_dice']:.4f}), "
             f"{result['n_negative']} without; allowed Dice drop {result['max_drop']:g}",
             "score       threshold   cleared without / with object   Dice drop   AUROC"]
    for c in result["candidates"]:
        t = "-" if c["threshold"] is None else f"{c['threshold']:.4g}"
        auc = "-" if c["auroc"] is None else f"{c['auroc']:.3f}"
        lines.append(f"{c['score']:<11} {t:<11} {c['negatives_cleared']:>7} / {c['positives_cleared']:<22} "
                     f"{c['dice_drop']:<11.4f} {auc}")
    d = result["decision"]
    lines.append("chosen: none (no threshold clears a frame without an object within the allowed drop)" if d is None
                 else f"chosen: clear a frame when its {d.score} is below {d.threshold:.4g}")
    return "\n".join(lines)
