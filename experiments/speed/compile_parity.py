"""Masks of a trained model, compiled against eager fp32, image by image (experiments/speed/README.md).

    python experiments/speed/compile_parity.py --model RUN/model-best --json experiments/speed/records/compile-parity.json

Images: CVC-ClinicDB val and Kvasir-SEG val (the committed splits), at their own sizes, batch 4. Per image the Dice
of the two binary masks (1 when both are empty); the project asks >= 0.995 for every image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from negative_set import DATASETS  # noqa: E402  (the two polyp datasets, their layouts and split files)


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def masks(model: str, precision: str, compiled: bool, images: list) -> tuple[list[np.ndarray], float]:
    import torch

    from leafseg.pipelines import load_pipeline

    torch._dynamo.reset()
    pipe = load_pipeline(model, "cpu", precision=precision, compile=compiled)
    start = time.perf_counter()
    with torch.inference_mode():
        out = pipe(images, batch_size=4)
    return [np.asarray(m, bool) for m in out.masks], time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from leafseg import data as D

    images = []
    for root, layout, split_file in DATASETS.values():
        pairs = D.select(D.find_dataset(root, layout), json.loads(split_file.read_text())["val"])
        images += [D.load_image(p.image) for p in pairs]
    reference, ref_s = masks(args.model, "fp32", False, images)
    result = {"model": args.model, "images": len(images), "fp32 eager s": ref_s}
    for precision in ("fp32", "bf16"):
        got, seconds = masks(args.model, precision, True, images)
        dice = np.array([mask_dice(a, b) for a, b in zip(reference, got)])
        result[f"{precision} compiled"] = {"s (first call compiles)": seconds, "min Dice": float(dice.min()),
                                           "mean Dice": float(dice.mean()),
                                           "images below 0.995": int((dice < 0.995).sum())}
        print(precision, json.dumps(result[f"{precision} compiled"]), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
