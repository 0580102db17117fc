"""Peak memory and speed of `leafseg train --config cpu` against the number of training samples: the streaming data
path's claim that resident memory does not grow with the dataset.

Data: synthetic NIfTI volumes of 100 slices of 256 x 256 (int16 noise with a box-shaped mask), N/100 volumes per
size; the cpu recipe trains at 128 x 128. Each run is `leafseg train --config cpu` in its own process, timed and
measured by the process itself (`resource.getrusage` peak RSS; the run's logs/timings.json), for --steps steps with
validation on 64 val slices once at the end. Each size runs with its own cache folder (first pass: decoding, mask
latents, teacher tokens, all measured) unless --reuse-cache names one already built.

The rows of docs/data-path.md (one job at a time; OUT=experiments/data-scale/records; the two aug-w rows were
recorded at commit c5e0550, where any geometric augmentation computed every target per batch, as
run.frozen_targets=on_the_fly does now):

    python experiments/data-scale/data_scale.py --steps 300 --out $OUT --sizes 400 --tag stream
    python experiments/data-scale/data_scale.py --steps 300 --out $OUT --sizes 400 --tag in-memory --baseline-src OLD_CHECKOUT
    AUG="data.augment.crop_scale=[0.5,1.0] data.augment.rotate=20 data.augment.gamma=[0.7,1.5] data.augment.noise=0.02"
    python experiments/data-scale/data_scale.py --steps 300 --out $OUT --sizes 400 --tag aug-w0 --set $AUG data.num_workers=0 \
        run.frozen_targets=on_the_fly
    python experiments/data-scale/data_scale.py --steps 300 --out $OUT --sizes 400 --tag aug-w1 --set $AUG data.num_workers=1 \
        run.frozen_targets=on_the_fly
    python experiments/data-scale/data_scale.py --steps 300 --out $OUT --sizes 4000 --tag stream
    python experiments/data-scale/data_scale.py --steps 300 --out $OUT --sizes 40000 --tag aug-fly-w1 --set $AUG \
        data.num_workers=1 run.frozen_targets=on_the_fly train.val_max_images=4

--baseline-src PATH runs the same command with another checkout's package (e.g. the in-memory data path of an
older commit) for a side-by-side row. Prints a table and writes one JSON per run into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LEAFSEG_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO / "benchmarks"))
from speed import cpu_description  # noqa: E402

RUN = """
import json, resource, sys, time
t0 = time.perf_counter()
from leafseg.cli import main
code = main(sys.argv[1:])
print("RESULT " + json.dumps({"rc": code, "wall_s": time.perf_counter() - t0,
                              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_volumes(root: Path, n: int, slices: int = 100, size: int = 256) -> Path:
    """``n`` slices as n / slices NIfTI volume pairs (made once; reused when ``root`` holds them)."""
    import nibabel as nib
    import numpy as np

    if (root / "done").exists():
        return root
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n // slices):
        image = rng.integers(0, 1000, (size, size, slices), dtype=np.int16)
        mask = np.zeros((size, size, slices), np.uint8)
        y, x = rng.integers(20, size // 2, 2)
        mask[y:y + size // 3, x:x + size // 3] = 1
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "images" / f"v{i:05d}.nii"))
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(root / "masks" / f"v{i:05d}.nii"))
    (root / "done").write_text("")
    return root


def run(n: int, args, data: Path, tag: str) -> dict:
    run_dir = Path(args.work) / f"run-{tag}-{n}"
    cache = Path(args.reuse_cache) if args.reuse_cache else Path(args.work) / f"cache-{tag}-{n}"
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    cmd = [sys.executable, "-c", RUN, "train", "--config", "cpu", "--output", str(run_dir),
           f"data.root={data}", f"autoencoder.path={SHARED / 'weights' / 'taef2'}", f"run.cache_dir={cache}",
           "data.split.train=0.9", "data.split.val=0.1", "data.split.test=0.0",
           f"train.max_steps={args.steps}", "train.time_budget_min=null", f"train.val_every={args.steps}",
           f"train.checkpoint_every={args.steps}", "train.val_max_images=64", *args.set]
    env = dict(os.environ)
    if args.baseline_src:
        env["PYTHONPATH"] = str(Path(args.baseline_src) / "src")
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0 or "RESULT " not in out.stdout:
        raise SystemExit(f"run {tag} N={n} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.split("RESULT ")[-1])
    timings = json.loads((run_dir / "logs" / "timings.json").read_text())
    steps = timings["steps"]["to"] - timings["steps"]["from"]
    return {"tag": tag, "n_slices": n, "steps": steps, "peak_rss_mib": round(result["peak_rss_mib"]),
            "wall_s": round(time.perf_counter() - started, 1), "before_first_step_s": timings["before_first_step_s"],
            "data_s": timings["data_s"], "frozen_targets_s": timings["frozen_targets_s"],
            "step_s": round(timings["steps_s"] / steps, 4), "steps_per_s": round(steps / timings["steps_s"], 3),
            "validation_s": timings["validation_s"], "overrides": args.set,
            "baseline_src": args.baseline_src, "cpu": f"{cpu_description()}, {os.cpu_count()} cores",
            "torch_threads": "default"}


def table(rows: list[dict]) -> str:
    head = ("| run | slices | peak RSS MiB | steps/s | s/step | decode s | frozen targets s | first step at s |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [f"| {r['tag']} | {r['n_slices']} | {r['peak_rss_mib']} | {r['steps_per_s']} | {r['step_s']} | "
             f"{r['data_s']} | {r['frozen_targets_s']} | {r['before_first_step_s']} |" for r in rows]
    return "\n".join([head, *lines])


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=int, default=[400, 4000])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--work", default="/tmp/leafseg-data-scale")
    ap.add_argument("--out", default=None, help="folder for one JSON per run")
    ap.add_argument("--tag", default="stream")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value")
    ap.add_argument("--reuse-cache", default=None)
    ap.add_argument("--baseline-src", default=None, help="a checkout whose src/ to run instead")
    args = ap.parse_args(argv)
    rows = []
    for n in args.sizes:
        data = make_volumes(Path(args.work) / f"volumes-{n}", n)
        row = run(n, args, data, args.tag)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"{args.tag}-{n}.json").write_text(json.dumps(row, indent=1) + "\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
