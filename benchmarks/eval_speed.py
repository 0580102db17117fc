"""How fast `leafseg evaluate` keeps up on large frames: N Kvasir-SEG frames resized to 1920x1080 (the multi-centre
sets' size) as a folder dataset, evaluated with full-size overlays and with the default smaller ones, against the
model's inference alone; prints a table (images/s) and where the time of a default evaluation goes (cProfile).

    python benchmarks/eval_speed.py --model runs/polyp/model-best [--n 40] [--size 1920 1080]
"""

from __future__ import annotations

import argparse
import importlib
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from speed import machine  # noqa: E402


def make_frames(source: Path, out: Path, n: int, size: tuple[int, int]) -> Path:
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for f in sorted((source / "images").iterdir())[:n]:
        Image.open(f).convert("RGB").resize(size, Image.BILINEAR).save(out / "images" / f"{f.stem}.png")
        mask = np.asarray(Image.open(source / "masks" / f.name).convert("L").resize(size, Image.NEAREST)) > 127
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{f.stem}.png")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "kvasir-seg"))
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--size", type=int, nargs=2, default=(1920, 1080), metavar=("W", "H"))
    args = ap.parse_args()
    from leafseg import data as D
    from leafseg.evaluation import evaluate
    from leafseg.pipelines import load_pipeline
    from leafseg.pipelines.precision import bf16_is_fast

    with tempfile.TemporaryDirectory() as tmp:
        data = make_frames(Path(args.source), Path(tmp) / "frames", args.n, tuple(args.size))
        pipe = load_pipeline(args.model, "cpu")
        images = [D.load_image(f) for f in sorted((data / "images").iterdir())]
        pipe(images[:2])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(images), 8):
            pipe(images[i:i + 8])
        rows = [("inference alone (batch 8, images in memory)", len(images) / (time.perf_counter() - start))]
        evaluate_module = importlib.import_module("leafseg.evaluation.evaluate")  # the module, not the function

        for label, size, overlap in (("evaluate, full-size overlays (--overlay-size 0)", 0, True),
                                     ("evaluate, overlays at 512 px, one thread (no read-ahead or scorer)", 512,
                                      False),
                                     ("evaluate, overlays at 512 px (default)", 512, True)):
            evaluate_module.OVERLAP = overlap
            start = time.perf_counter()
            evaluate(args.model, str(data), "all", None, str(Path(tmp) / f"eval-{size}-{overlap}"), device="cpu",
                     overlay_size=size)
            rows.append((label, args.n / (time.perf_counter() - start)))
        evaluate_module.OVERLAP = True
        if bf16_is_fast("cpu"):
            start = time.perf_counter()
            evaluate(args.model, str(data), "all", None, str(Path(tmp) / "eval-bf16"), device="cpu",
                     precision="bf16")
            rows.append(("evaluate, overlays at 512 px, --precision bf16", args.n / (time.perf_counter() - start)))
        profile = cProfile.Profile()  # a third run, profiled (the profiler's overhead stays out of the table)
        profile.enable()
        evaluate(args.model, str(data), "all", None, str(Path(tmp) / "eval-profiled"), device="cpu")
        profile.disable()
    print(f"{args.n} frames at {args.size[0]}x{args.size[1]}, {machine()}\n")
    print("| what | images/s |\n|---|---|")
    for label, rate in rows:
        print(f"| {label} | {rate:.2f} |")
    print("\nwhere an evaluation with the default overlays spends its time (cumulative, top 20):")
    pstats.Stats(profile).sort_stats("cumulative").print_stats(20)


if __name__ == "__main__":
    main()
