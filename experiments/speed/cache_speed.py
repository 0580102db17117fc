"""Start-up cost of `leafseg train`: the frozen caches (mask latents, teacher tokens) per image, by backend and by the
recipe choices they depend on (teacher input size and layer), with what they would cost for a training set.

The two functions are the ones the trainer caches (`training.caches.MaskLatents` / `TeacherFeatures` through
`frozen_function`, channels-last batches as `flipped_inputs` feeds them); random inputs, since the cost does not depend
on the values. Mask latents are computed for every flip of every image; teacher tokens once per image when
`align.flip_tokens: mirror` (the `cpu` recipe), so the table's last column is images x flips (4 in the recipe)
for the masks.

    .venv/bin/python experiments/speed/cache_speed.py                                  # cpu recipe, both backends
    .venv/bin/python experiments/speed/cache_speed.py --teacher-size 64 96 112 128 --teacher-layer neck stage2

Timings: median over --repeats batches after one warm-up batch, in this process (2 threads unless
--threads); the ONNX export is timed separately (it is paid once per run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LEAFSEG_SHARED", REPO.parent / "shared"))


def time_function(module, resolution: int, batch: int, repeats: int, backend: str) -> dict:
    """Export time and median seconds per image of ``module`` on channels-last [0, 1] batches."""
    import torch

    from leafseg.training.caches import frozen_function

    x = torch.rand(batch, 3, resolution, resolution).contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    fn = frozen_function(module.eval(), torch.zeros(1, 3, resolution, resolution), backend)
    export_s = time.perf_counter() - start
    with torch.no_grad():
        fn(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return {"export_s": export_s, "s_per_image": statistics.median(times) / batch}


def main(argv: list[str] | None = None) -> list[dict]:
    import torch
    from omegaconf import OmegaConf

    from leafseg.config import load_config
    from leafseg.models import autoencoder as ae_ops
    from leafseg.training.caches import CACHE_BACKENDS, MaskLatents, TeacherFeatures, cache_backend
    from leafseg.training.engine import flip_codes
    from leafseg.training.leaf import build_alignment_teacher, build_components

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cpu", help="recipe whose resolution, autoencoder and teacher are timed")
    ap.add_argument("--backend", nargs="*", default=list(CACHE_BACKENDS), choices=CACHE_BACKENDS)
    ap.add_argument("--teacher-size", nargs="*", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--teacher-layer", nargs="*", default=None, help="default: the recipe's")
    ap.add_argument("--train-images", type=int, default=368, help="training-set size for the last column (CVC: 368)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-masks", action="store_true", help="time the teacher only")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, ["data.root=unused", f"autoencoder.path={SHARED / 'weights' / 'taef2'}"])
    r, ac = int(cfg.data.resolution), cfg.align
    flips = len(flip_codes(cfg.data.hflip, cfg.data.vflip))  # the trainer's flip codes (4 with both flips)
    teacher_passes = args.train_images * (1 if ac.flip_tokens == "mirror" else flips)
    jobs = []
    if not args.no_masks:
        ae = build_components(cfg)["autoencoder"]  # as the trainer builds it
        jobs.append((f"mask latents ({cfg.autoencoder.kind})", lambda: MaskLatents(ae, ae_ops.latent_scale(ae)),
                     args.train_images * flips))
    for size in args.teacher_size or [int(ac.teacher_image_size)]:
        for layer in args.teacher_layer or [str(ac.teacher_layer)]:
            def make(size=size, layer=layer):  # the trainer's teacher with this size and layer
                return TeacherFeatures(build_alignment_teacher(
                    OmegaConf.merge(ac, {"teacher_image_size": size, "teacher_layer": layer})))
            jobs.append((f"teacher {ac.teacher} {layer} @ {size} px", make, teacher_passes))
    print(f"{args.threads} thread(s), batch {args.batch}, inputs {r} x {r}, torch {torch.__version__}")
    print("| part | backend | export s | ms per image | passes for the training set | s for them |")
    print("|---|---|---|---|---|---|")
    # onnx without onnxruntime says so once and times torch, as the trainer falls back (torch then timed once)
    backends = list(dict.fromkeys(cache_backend(asked, "cpu") for asked in args.backend))
    rows = []
    for name, make, passes in jobs:
        module = make()
        for backend in backends:
            t = time_function(module, r, args.batch, args.repeats, backend)
            rows.append({"part": name, "backend": backend, **t, "passes": passes})
            print(f"| {name} | {backend} | {t['export_s']:.1f} | {t['s_per_image'] * 1000:.0f} | {passes} | "
                  f"{t['s_per_image'] * passes:.0f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
