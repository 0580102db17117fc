"""How much of a polyp a frozen image representation shows to a linear read-out, across centres.

Each image is resized to the cpu recipes' 128 px (as training and predict do), the representation is resampled to
the 16x16 latent grid, and a per-cell logistic regression (weight decay 1e-4, LBFGS) is fitted on CVC-ClinicDB's
train split to say whether a cell is mostly polyp. Scored by per-image Dice of the 16x16 cells on CVC-ClinicDB val
and on all 1000 Kvasir-SEG images (another centre). Representations: TAEF2's encoder latent (what LEAF's image
encoder starts from) and LiteMedSAM's TinyViT neck at input sizes 64, 96 and 128.

    python experiments/semantic-condition/probe.py --shared ../shared --out experiments/semantic-condition/probe.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from leafseg.models.autoencoder import load_autoencoder
from leafseg.models.teachers import LiteMedSAMTeacher, resample_to_grid

GRID, RES = 16, 128


def load(folder: Path, stems: list[str], image_ext: str, mask_ext: str):
    images, masks = [], []
    for s in stems:
        im = Image.open(folder / "images" / f"{s}{image_ext}").convert("RGB").resize((RES, RES), Image.BILINEAR)
        m = Image.open(folder / "masks" / f"{s}{mask_ext}").convert("L").resize((RES, RES), Image.BILINEAR)
        images.append(np.asarray(im))
        masks.append(np.asarray(m) > 127)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    y = F.adaptive_avg_pool2d(torch.from_numpy(np.stack(masks)).float()[:, None], GRID)[:, 0] > 0.5
    return x, y


@torch.no_grad()
def features(fn, x: torch.Tensor) -> torch.Tensor:
    out = [resample_to_grid(fn(x[i:i + 16]).float(), GRID) for i in range(0, len(x), 16)]
    f = torch.cat(out)
    return f.permute(0, 2, 3, 1).reshape(len(x), GRID * GRID, -1)


def fit(f: torch.Tensor, y: torch.Tensor, decay: float = 1e-4):
    mu, sd = f.reshape(-1, f.shape[-1]).mean(0), f.reshape(-1, f.shape[-1]).std(0) + 1e-6
    a = ((f - mu) / sd).reshape(-1, f.shape[-1])
    t = y.reshape(-1).float()
    w = torch.zeros(a.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(a @ w + b, t) + decay * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda g: (((g - mu) / sd) @ w.detach() + b.detach()) > 0


def dice(pred: torch.Tensor, y: torch.Tensor) -> float:
    p, g = pred.reshape(len(y), -1).float(), y.reshape(len(y), -1).float()
    inter, total = (p * g).sum(1), p.sum(1) + g.sum(1)
    return float(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    shared = Path(args.shared)
    split = json.loads(Path("benchmarks/splits/cvc-clinicdb.json").read_text())
    cvc = shared / "data/cvc-clinicdb"
    kv = shared / "data/kvasir-seg"
    xtr, ytr = load(cvc, split["train"], ".png", ".png")
    xva, yva = load(cvc, split["val"], ".png", ".png")
    kstems = sorted(p.stem for p in (kv / "images").glob("*.jpg"))
    xkv, ykv = load(kv, kstems, ".jpg", ".jpg")
    taef2 = load_autoencoder("taef2", shared / "weights/taef2", {}, 1.6)
    reps = {"taef2-encoder": lambda x: taef2.encode(x)}
    for size in (64, 96, 128):
        teacher = LiteMedSAMTeacher(image_size=size)
        reps[f"tinyvit-neck@{size}"] = lambda x, t=teacher: t.features(x)
    rows = {}
    for name, fn in reps.items():
        started = time.time()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ftr, fva, fkv = features(fn, xtr), features(fn, xva), features(fn, xkv)
        predict = fit(ftr, ytr)
        rows[name] = {"dim": ftr.shape[-1], "cvc_val": dice(predict(fva), yva), "kvasir_all": dice(predict(fkv), ykv),
                      "seconds": round(time.time() - started, 1)}
        print(name, rows[name], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
