"""The frame-decision study (README.md beside this file): calibrate each model's decision on one set of validation
frames and judge it on frames it never saw, from what `leafseg evaluate` wrote. Prints a Markdown table.

    RUNS=/work/runs python experiments/frame-decision/frame_decision.py
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from leafseg.pipelines.frame_decision import FRAME_SCORES, calibrate

RUNS = Path(os.environ.get("RUNS", "runs"))
MODELS = {"X2S1r (recipe)": "polyp-x2-s1r", "N1 (inpainted negatives)": "polyp-n1-s1",
          "C1 (condition both)": "polyp-c1-s1", "BasicUNet peer": "polyp-basicunet-s1",
          "CI1 (condition both + inpainted negatives)": "polyp-ci1-s1",  # CI1, CI1T: experiments/condition-and-inpaint
          "CI1T (CI1 at the peer's 34 min)": "polyp-ci1t-s1"}
MAX_DROP = 0.01


def read(folder: Path) -> tuple[list[str], dict[str, np.ndarray], np.ndarray]:
    """Names, frame scores and Dice of one evaluation made without a decision."""
    summary = json.loads((folder / "summary.json").read_text())
    if (summary.get("inference") or {}).get("frame_decision"):
        raise SystemExit(f"{folder}: evaluated with a frame decision; this study needs the raw scores")
    with open(folder / "frame_scores.csv", newline="") as f:
        frames = list(csv.DictReader(f))
    with open(folder / "per_image.csv", newline="") as f:
        dice = {r["name"]: float(r["dice"]) for r in csv.DictReader(f)}
    names = [r["name"] for r in frames]
    return names, {k: np.array([float(r[k]) for r in frames]) for k in FRAME_SCORES}, np.array([dice[n] for n in names])


def take(scores: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in scores.items()}


def applied(decision, scores: dict[str, np.ndarray], dice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cleared, Dice with the decision): a cleared frame gets an empty mask, 1 on a polyp-free frame, 0 on one with
    a polyp."""
    if decision is None:
        return np.zeros(len(dice), bool), dice
    cleared = decision.clears(scores)
    return cleared, np.where(cleared, 0.0, dice)


def describe(decision) -> str:
    return "none (no threshold clears a frame within the drop)" if decision is None else \
        f"{decision.score} < {decision.threshold:.4g}"


def main() -> None:
    rows, decisions = [], []
    for label, run in MODELS.items():
        folder = RUNS / run
        if not (folder / "eval-kvasir-all").is_dir():  # a run not evaluated yet (its script evaluates this set last)
            print(f"{label}: {folder} has no finished evaluations; left out")
            continue
        _, cvc_s, cvc_d = read(folder / "eval-cvc-val")
        _, kv_s, kv_d = read(folder / "eval-kvasir-val")
        _, crop_s, _ = read(folder / "eval-negatives-val")
        ff_names, ff_s, ff_d = read(folder / "eval-fullframe-negatives-val")
        empty_before = ff_d == 1.0  # a polyp-free frame scores 1 when left empty
        order = np.argsort(ff_names)
        folds = [order[0::2], order[1::2]]

        arm_a = calibrate(cvc_s, cvc_d, crop_s, MAX_DROP)["decision"]
        arms = {"A (crops)": [(arm_a, np.arange(len(ff_d)))]}
        arms["B (2 folds of full frames)"] = [
            (calibrate(cvc_s, cvc_d, take(ff_s, folds[1 - k]), MAX_DROP)["decision"], folds[k]) for k in (0, 1)]
        for arm, parts in arms.items():
            empty_after = empty_before.copy()
            for decision, idx in parts:
                cleared, _ = applied(decision, take(ff_s, idx), ff_d[idx])
                empty_after[idx] |= cleared
            # CVC and Kvasir val with the decision; arm B has two decisions: report both folds' mean effect
            cvc_with = np.mean([applied(d, cvc_s, cvc_d)[1].mean() for d, _ in parts])
            kv_with = np.mean([applied(d, kv_s, kv_d)[1].mean() for d, _ in parts])
            kv_lost = np.mean([int(applied(d, kv_s, kv_d)[0].sum()) for d, _ in parts])
            gained = int((empty_after & ~empty_before).sum())
            pays = (100 * (empty_after.mean() - empty_before.mean()) >= 20) and (100 * (kv_d.mean() - kv_with) <= 2)
            rows.append(f"| {label} | {arm} | {int(empty_before.sum())} ({100 * empty_before.mean():.1f}%) | "
                        f"{int(empty_after.sum())} ({100 * empty_after.mean():.1f}%) | +{gained} | "
                        f"{cvc_d.mean():.4f} / {cvc_with:.4f} | {kv_d.mean():.4f} / {kv_with:.4f} ({kv_lost:g} of "
                        f"{len(kv_d)} cleared) | {'yes' if pays else 'no'} |")
            decisions += [f"- {label}, arm {arm}: " + "; ".join(describe(d) for d, _ in parts)]
    print("| model | arm | full frames left empty, no decision | with the decision (judged out of sample) | frames "
          "changed | CVC val Dice without / with | Kvasir val Dice without / with | pays |\n"
          "|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nDecisions chosen (`max_drop` 0.01):\n")
    print("\n".join(decisions))


if __name__ == "__main__":
    main()
