"""Inference precision on a trained model: speed of fp32 and bf16 (image encoder + UNet in bf16, channels-last on the
CPU; mask decoder fp32), the masks' agreement with fp32's, and each one's per-image Dice against the ground truth.

    python benchmarks/precision.py --model runs/cvc/model-best --data ../shared/data/cvc-clinicdb \
        --layout cvc-clinicdb --split-file benchmarks/splits/cvc-clinicdb.json --split test

Prints a table and which precision `--precision auto` picks on this machine. Timings: wall time of the pipeline call
over the whole split in batches of --batch (images already decoded), median of --repeats.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from leafseg import data as D
from leafseg.metrics import dice
from leafseg.pipelines import load_pipeline
from leafseg.pipelines.precision import bf16_is_fast, resolve_precision


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--layout", default="folder")
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    pairs = D.find_dataset(args.data, args.layout)
    chosen = D.select(pairs, D.read_split(args.split_file, [p.stem for p in pairs])[args.split])
    images = [D.load_image(p.image) for p in chosen]
    truths = [D.load_mask(p.mask, p.mask_rule) for p in chosen]
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; bf16 units: "
          f"{bf16_is_fast(args.device)}; --precision auto picks {resolve_precision('auto', args.device)}")
    print(f"{len(images)} images of {args.data} ({args.split}), batch {args.batch}")
    rows, reference = [], None
    for precision in ("fp32", "bf16"):
        pipe = load_pipeline(args.model, args.device, precision=precision)
        pipe(images[: args.batch], batch_size=args.batch)  # warm-up (oneDNN kernels for the shapes)
        times, out = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = pipe(images, batch_size=args.batch)
            times.append(time.perf_counter() - t)
        masks = out.masks
        if reference is None:
            reference = masks
        agreement = float(np.mean([dice(a, b) for a, b in zip(masks, reference)]))
        score = float(np.mean([dice(m, g) for m, g in zip(masks, truths)]))
        rows.append((precision, statistics.median(times) / len(images), agreement, score))
    print("| precision | s/image | masks Dice vs fp32 | Dice vs ground truth |")
    print("|---|---|---|---|")
    for precision, s, agreement, score in rows:
        print(f"| {precision} | {s:.4f} | {agreement:.4f} | {score:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
