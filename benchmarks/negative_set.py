"""A test set of frames without a polyp, built from the test splits of CVC-ClinicDB and Kvasir-SEG: for each test
image, the largest square crop beside the polyp's bounding box (at the original resolution, no resizing), kept when
its side is at least --min-side of the image's shorter side; its mask is empty. Neither dataset has polyp-free
frames, and a model that marks something on every frame is useless in a clinic: `leafseg evaluate --split all` on
this folder counts how many frames come out empty.

    python benchmarks/negative_set.py --out /tmp/polyp-negatives
    leafseg evaluate --model RUN/model-best --data /tmp/polyp-negatives --split all --output RUN/eval-negatives

By default only test-split images are used (never train or val), so the set measures, it does not select;
`--split val` builds the same kind of set from the val splits, on which recipes may be compared and chosen.

`--mode inpaint` builds full frames instead: each image at its own size with the polyp painted out (the mask dilated
by 3% of the shorter side, OpenCV's Telea inpainting, as data.augment.negative_mode=inpaint does in training;
images whose polyp covers over 40% of the frame are skipped). A crop shows a model a patch of mucosa at a zoom it
never meets; a full frame has the folds, lumen, light and scope borders a polyp-free frame from a clinic has.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LEAFSEG_SHARED", REPO.parent / "shared"))
DATASETS = {  # name: (root, layout, committed split file)
    "cvc": (SHARED / "data" / "cvc-clinicdb", "cvc-clinicdb", REPO / "benchmarks" / "splits" / "cvc-clinicdb.json"),
    "kvasir": (SHARED / "data" / "kvasir-seg", "kvasir-seg", REPO / "benchmarks" / "splits" / "kvasir-seg.json"),
}


def free_square(mask: np.ndarray) -> tuple[int, int, int] | None:
    """(top, left, side) of the largest square beside the mask's bounding box, centred in its band (None when the
    mask is empty); the band is the one training's negative crops use (leafseg.data.augment.free_band)."""
    from leafseg.data.augment import free_band

    if not mask.any():
        return None
    top, left, bottom, right = free_band(mask)
    side = min(bottom - top, right - left)
    return top + (bottom - top - side) // 2, left + (right - left - side) // 2, side


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--min-side", type=float, default=0.35, help="of the image's shorter side")
    ap.add_argument("--split", default="test", choices=("val", "test"),
                    help="val: a set to choose a recipe on; test: the set that measures it, once")
    ap.add_argument("--mode", default="crop", choices=("crop", "inpaint"),
                    help="crop: the largest square beside the polyp; inpaint: the full frame, polyp painted out")
    args = ap.parse_args(argv)
    from leafseg import data as D
    from leafseg.data.augment import inpaint_object

    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    made = {}
    for name, (root, layout, split_file) in DATASETS.items():
        pairs = D.select(D.find_dataset(root, layout), json.loads(split_file.read_text())[args.split])
        made[name] = 0
        for pair in pairs:
            image, mask = D.load_image(pair.image), D.load_mask(pair.mask)
            if args.mode == "inpaint":
                negative = inpaint_object(image, mask) if mask.any() else None
                if negative is None:
                    continue
            else:
                square = free_square(mask)
                if square is None or square[2] < args.min_side * min(mask.shape):
                    continue
                top, left, side = square
                negative = image[top:top + side, left:left + side]
            stem = f"{name}-{pair.stem}"
            Image.fromarray(negative).save(out / "images" / f"{stem}.png")
            Image.fromarray(np.zeros(negative.shape[:2], np.uint8)).save(out / "masks" / f"{stem}.png")
            made[name] += 1
    kind = "full frames with the polyp painted out" if args.mode == "inpaint" else "crops beside the polyp"
    print(f"{sum(made.values())} frames without a polyp ({kind}) in {out} ({made}, from the {args.split} splits)")
    return made


if __name__ == "__main__":
    main()
