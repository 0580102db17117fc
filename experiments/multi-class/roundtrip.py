"""How well does the frozen mask autoencoder carry K classes through its latent? Two designs, measured on
cxr-structures label maps: (A) each class a corner of the RGB cube (one latent, read back as the most probable class
code, the pipeline's rule)
and (B) each class a binary mask encoded on its own (K latents as channel groups, decoded by argmax). Masks resized
to each size class by class (bilinear soft maps, argmax: leafseg.data.resize_labels), as training does.

python experiments/multi-class/roundtrip.py --out experiments/multi-class/roundtrip.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from leafseg.data import resize_labels
from leafseg.models import autoencoder as ae_ops
from leafseg.models.class_codes import class_codes, class_probabilities


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * (a & b).sum() / s


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/cxr-structures")
    parser.add_argument("--autoencoder", default="../shared/weights/taef2")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    ae = ae_ops.load_autoencoder("taef2", args.autoencoder)
    names = json.loads((Path(args.data) / "labels.json").read_text())
    k = len(names) - 1
    masks = [np.array(Image.open(p)) for p in sorted((Path(args.data) / "masks").glob("*.png"))]
    codes = class_codes(k)  # (K+1, 3), design A as leafseg.models.class_codes paints them
    result = {"images": len(masks), "classes": {str(c): names[str(c)] for c in range(1, k + 1)},
              "machine": platform.processor() or platform.machine(), "sizes": {}}
    for size in args.sizes:
        labels = np.stack([resize_labels(m, size) for m in masks])
        lab = torch.from_numpy(labels).long()
        t0 = time.perf_counter()
        # A: one RGB image per mask, class c painted in its code's colour, in [-1, 1]
        rgb = codes[lab].permute(0, 3, 1, 2) * 2 - 1
        dec = torch.cat([ae_ops.decode(ae, ae_ops.encode(ae, rgb[i:i + 8])) for i in range(0, len(rgb), 8)])
        soft = (dec + 1) / 2  # (N, 3, H, W)
        a_pred = class_probabilities(soft, k).argmax(1).numpy()  # the pipeline's rule
        ta = time.perf_counter() - t0
        t0 = time.perf_counter()
        # B: K binary masks, each replicated to 3 channels and encoded alone
        per_class = []
        for c in range(1, k + 1):
            x = (lab == c).float()[:, None].expand(-1, 3, -1, -1) * 2 - 1
            d = torch.cat([ae_ops.decode(ae, ae_ops.encode(ae, x[i:i + 8])) for i in range(0, len(x), 8)])
            per_class.append(((d + 1) / 2).mean(1))
        scores = torch.stack(per_class, 1)  # (N, K, H, W)
        best = scores.max(1)
        b_pred = torch.where(best.values > 0.5, best.indices + 1, 0).numpy()
        tb = time.perf_counter() - t0
        row = {}
        for design, pred, secs in (("A_colour_codes", a_pred, ta), ("B_channel_groups", b_pred, tb)):
            per = {names[str(c)]: float(np.mean([dice(labels[i] == c, pred[i] == c) for i in range(len(masks))]))
                   for c in range(1, k + 1)}
            row[design] = {"dice_per_class": per, "min": min(per.values()), "seconds": round(secs, 2)}
        result["sizes"][str(size)] = row
        print(size, json.dumps(row, indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
