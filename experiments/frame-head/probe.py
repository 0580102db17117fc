"""A frame-level "is there a polyp?" head on frozen features, fitted on CVC-ClinicDB train alone and judged on frames
it never saw (README.md beside this file: the question and the rule, written before the numbers).

Features of each frame resized to 128 px (as a `cpu-polyp` model sees it), pooled over the image (mean and max
per channel): LiteMedSAM's TinyViT neck (the ``image_encoder.condition`` branch) or TAEF2's encoder latent (what
plain LEAF's image encoder starts from). Training frames: the 368 CVC-ClinicDB train frames (polyp), the same
frames with the polyp painted out (no polyp), and the same frames with a polyp-sized patch elsewhere painted over
(polyp kept: "sham" inpainting, so that a painted patch cannot be what says "no polyp"). An L2-regularised logistic
regression (LBFGS) on standardised features; the threshold keeps 99% of CVC-ClinicDB val's polyp frames.

    RUNS=/work/runs python experiments/frame-head/probe.py --json experiments/frame-head/probe.json

RUNS holds the two negative sets built by `benchmarks/negative_set.py --split val [--mode inpaint]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LEAFSEG_SHARED", REPO.parent / "shared"))
RUNS = Path(os.environ.get("RUNS", "runs"))
sys.path.insert(0, str(REPO / "benchmarks"))
from negative_set import DATASETS  # noqa: E402  (the two polyp datasets, their layouts and split files)
RESOLUTION = 128
KEEP = 0.99  # share of CVC-ClinicDB val polyp frames the threshold keeps


def sham_inpaint(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """The image with a patch of the polyp's shape painted over somewhere the polyp is not (polyp kept), or None when
    no place clear of the (dilated) polyp is found in 50 tries."""
    from leafseg.data.augment import inpaint_object

    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    top, left, bottom, right = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    shape = mask[top:bottom, left:right]
    margin = max(1, round(0.06 * min(h, w)))
    for _ in range(50):
        y = int(rng.integers(0, h - shape.shape[0] + 1))
        x = int(rng.integers(0, w - shape.shape[1] + 1))
        if (y + shape.shape[0] + margin <= top or y >= bottom + margin or x + shape.shape[1] + margin <= left
                or x >= right + margin):
            patch = np.zeros_like(mask)
            patch[y:y + shape.shape[0], x:x + shape.shape[1]] = shape
            return inpaint_object(image, patch)
    return None


def frames(split_name: str, dataset: str, split: str | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from leafseg import data as D

    root, layout, split_file = DATASETS[dataset]
    pairs = D.find_dataset(root, layout)
    if split is not None:
        pairs = D.select(pairs, json.loads(split_file.read_text())[split])
    return [(f"{split_name}/{p.stem}", D.load_image(p.image), D.load_mask(p.mask) if p.mask else None) for p in pairs]


def folder_frames(folder: Path) -> list[tuple[str, np.ndarray, None]]:
    from leafseg.data.io import load_image

    return [(f"{folder.name}/{p.stem}", load_image(p), None) for p in sorted((folder / "images").glob("*.png"))]


class Features:
    """Pooled frozen features of 8-bit frames (mean and max over space, per channel)."""

    def __init__(self, kind: str):
        from leafseg.pipelines.image_processor import SegmentationImageProcessor

        self.kind, self.processor = kind, SegmentationImageProcessor(RESOLUTION)
        if kind == "tinyvit":
            from leafseg.models.semantic_condition import SemanticCondition

            self.net = SemanticCondition(4, 8, RESOLUTION).load_lite_medsam().eval().encoder
        else:
            from leafseg.models.taef2 import TAEF2

            folder = SHARED / "weights" / "taef2"
            self.net = TAEF2.from_taesd_weights(folder / "taef2_encoder.pth", folder / "taef2_decoder.pth").encoder

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray], batch: int = 8) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch):
            x, _ = self.processor.preprocess(images[i:i + batch])  # [-1, 1]
            x = (x + 1) / 2
            with torch.autocast("cpu", torch.bfloat16):
                f = self.net(x).float()
            out.append(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))
        return torch.cat(out).numpy()


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt, yt = torch.tensor((x - mean) / std, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b), mean, std


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a polyp frame scores above a polyp-free one), ties counted half."""
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", nargs="+", default=["tinyvit", "taef2"], choices=["tinyvit", "taef2"])
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    from leafseg.data.augment import inpaint_object

    start = time.perf_counter()
    train = frames("cvc-train", "cvc", "train")
    negatives, shams = [], []
    for _name, image, mask in train:
        painted = inpaint_object(image, mask)
        if painted is not None:
            negatives.append(painted)
        sham = sham_inpaint(image, mask, rng)
        if sham is not None:
            shams.append(sham)
    sets = {"cvc-val": frames("cvc-val", "cvc", "val"), "kvasir-val": frames("kvasir-val", "kvasir", "val"),
            "kvasir-all": frames("kvasir-all", "kvasir", None)}
    judged = {name: [im for _, im, _ in frames_] for name, frames_ in sets.items()}
    judged["sham-val"] = [s for _, im, m in sets["cvc-val"] + sets["kvasir-val"]
                          if (s := sham_inpaint(im, m, rng)) is not None]
    judged["fullframe-negatives-val"] = [im for _, im, _ in folder_frames(RUNS / "polyp-fullframe-negatives-val")]
    judged["crop-negatives-val"] = [im for _, im, _ in folder_frames(RUNS / "polyp-negatives-val")]
    polyp = {"cvc-val", "kvasir-val", "kvasir-all", "sham-val"}
    print(f"frames: train {len(train)} polyp + {len(shams)} sham (polyp) + {len(negatives)} painted out (none); "
          + ", ".join(f"{k} {len(v)}" for k, v in judged.items()) + f" ({time.perf_counter() - start:.0f} s)",
          flush=True)
    results = {"train": {"polyp": len(train), "sham": len(shams), "painted_out": len(negatives)}, "l2": args.l2}
    for kind in args.features:
        start = time.perf_counter()
        feats = Features(kind)
        x = np.concatenate([feats([im for _, im, _ in train]), feats(shams), feats(negatives)])
        y = np.concatenate([np.ones(len(train) + len(shams)), np.zeros(len(negatives))])
        w, b, mean, std = fit_logistic(x, y, args.l2)
        scores = {k: ((feats(v) - mean) / std) @ w + b for k, v in judged.items()}
        threshold = float(np.quantile(scores["cvc-val"], 1 - KEEP))
        row = {"seconds": round(time.perf_counter() - start, 1), "threshold": threshold}
        for k, s in scores.items():
            kept = float((s >= threshold).mean())
            row[k] = {"n": len(s), ("polyp frames kept" if k in polyp else "left empty"): kept if k in polyp
                      else 1 - kept}
        neg_all = np.concatenate([scores["fullframe-negatives-val"]])
        row["auroc cvc-val+kvasir-val vs full-frame negatives"] = auroc(
            np.concatenate([scores["cvc-val"], scores["kvasir-val"]]), neg_all)
        row["auroc kvasir-all vs full-frame negatives"] = auroc(scores["kvasir-all"], neg_all)
        row["auroc cvc-val+kvasir-val vs crop negatives"] = auroc(
            np.concatenate([scores["cvc-val"], scores["kvasir-val"]]), scores["crop-negatives-val"])
        results[kind] = row
        print(f"## {kind}\n{json.dumps(row, indent=1)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
