"""The LEAF ablation (target x alignment) plus a supervised UNet baseline, at CPU scale, on CVC-ClinicDB.

Every run: the `cpu-small` config (TAEF2 autoencoder, LiteMedSAM teacher, 128x128), the same step budget, the
committed split file (benchmarks/splits/cvc-clinicdb.json, 60/20/20 sorted + seeded), selection of model-best on
the val split, then `leafseg evaluate` on the test split. Runs are resumable: rerunning the script skips finished
runs and resumes an interrupted one. At the end it writes docs/results.md with the table, the machine, the wall
time of each run and the exact commands.

    .venv/bin/python benchmarks/ablation.py                       # the full cpu-small budget (hours on 2 cores)
    .venv/bin/python benchmarks/ablation.py --steps 400           # a shorter, equal budget for every run
    .venv/bin/python benchmarks/ablation.py --report-only         # rewrite docs/results.md from finished runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RUNS = {  # name: (label, overrides)
    "eps": ("ε, no alignment", ["diffusion.prediction_type=epsilon", "align.enabled=false"]),
    "eps-align": ("ε + alignment", ["diffusion.prediction_type=epsilon", "align.enabled=true"]),
    "v": ("v, no alignment", ["diffusion.prediction_type=v_prediction", "align.enabled=false"]),
    "v-align": ("v + alignment", ["diffusion.prediction_type=v_prediction", "align.enabled=true"]),
    "x0": ("x0, no alignment", ["diffusion.prediction_type=sample", "align.enabled=false"]),
    "x0-align": ("x0 + alignment (LEAF)", ["diffusion.prediction_type=sample", "align.enabled=true"]),
    "unet": ("supervised UNet (Dice + BCE)", ["method=supervised_unet"]),
}


def leafseg() -> str:
    exe = Path(sys.executable).with_name("leafseg")
    return str(exe) if exe.exists() else "leafseg"


def run_logged(cmd: list[str], log: Path) -> float:
    """Run a command, tee-less: output appended to ``log``; returns wall seconds; raises on failure."""
    started = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"command failed ({proc.returncode}), see {log}: {shlex.join(cmd)}")
    return time.time() - started


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} logical CPUs, GPU: {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cvc-clinicdb"))
    ap.add_argument("--taef2", default=str(REPO.parent / "shared" / "weights" / "taef2"))
    ap.add_argument("--split-file", default=str(REPO / "benchmarks" / "splits" / "cvc-clinicdb.json"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "runs" / "cvc-ablation"))
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default: cpu-small's)")
    ap.add_argument("--val-every", type=int, default=None)
    ap.add_argument("--only", nargs="*", default=None, choices=sorted(RUNS), help="run a subset")
    ap.add_argument("--results", default=str(REPO / "docs" / "results.md"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(RUNS)
    common = [f"data.root={args.data}", "data.layout=cvc-clinicdb", f"data.split_file={args.split_file}",
              f"autoencoder.path={args.taef2}", f"run.cache_dir={out / 'cache'}", "train.val_at_start=true"]
    if args.steps:
        common += [f"train.max_steps={args.steps}", f"train.checkpoint_every={max(50, args.steps // 4)}"]
    if args.val_every:
        common.append(f"train.val_every={args.val_every}")
    if not args.report_only:
        (out / "invocation.txt").write_text(shlex.join(["benchmarks/ablation.py", *sys.argv[1:]]) + "\n")
    for name in names if not args.report_only else []:
        run_dir = out / name
        timing_file = run_dir / "benchmark-timing.json"
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
        if "eval_s" in timing:
            print(f"{name}: done already")
            continue
        train_cmd = [leafseg(), "train", "--config", "cpu-small", "--output", str(run_dir),
                     *common, *RUNS[name][1]]
        if (run_dir / "checkpoint-last").exists():
            train_cmd.insert(4, "--resume")
        print(f"{name}: training ({shlex.join(train_cmd)})", flush=True)
        log = out / f"{name}.log"
        timing["train_s"] = timing.get("train_s", 0.0) + run_logged(train_cmd, log)
        timing["train_cmd"] = shlex.join([c for c in train_cmd if c != "--resume"])
        eval_cmd = [leafseg(), "evaluate", "--model", str(run_dir / "model-best"), "--data", args.data,
                    "--layout", "cvc-clinicdb", "--split", "test", "--split-file", args.split_file,
                    "--output", str(run_dir / "eval-test")]
        print(f"{name}: evaluating", flush=True)
        timing["eval_s"] = run_logged(eval_cmd, log)
        timing["eval_cmd"] = shlex.join(eval_cmd)
        run_dir.mkdir(parents=True, exist_ok=True)
        timing_file.write_text(json.dumps(timing, indent=2))
    write_report(out, Path(args.results), args)


def _fmt(m: dict, key: str, digits: int = 1, pct: bool = True) -> str:
    s = m[key]
    scale = 100 if pct else 1
    if s.get("mean") is None:
        return "n/a"
    text = f"{s['mean'] * scale:.{digits}f}"
    if "ci_low" in s and s["ci_low"] is not None:
        text += f" [{s['ci_low'] * scale:.{digits}f}, {s['ci_high'] * scale:.{digits}f}]"
    return text


def write_report(out: Path, results: Path, args) -> None:
    rows, commands = [], []
    for name, (label, _) in RUNS.items():
        run_dir = out / name
        summary_file = run_dir / "eval-test" / "summary.json"
        timing_file = run_dir / "benchmark-timing.json"
        if not summary_file.exists() or not timing_file.exists():
            rows.append(f"| {label} | not run | | | | | | |")
            continue
        summary = json.loads(summary_file.read_text())
        timing = json.loads(timing_file.read_text())
        state = json.loads((run_dir / "checkpoint-last" / "trainer_state.json").read_text())
        m = summary["metrics"]
        start = next((h["val_dice"] for h in state["history"] if h.get("step") == 0 and "val_dice" in h), None)
        paper = m["paper_compatible"]
        start_text = f" (start {start * 100:.1f})" if start is not None else ""
        rows.append(
            f"| {label} | {_fmt(m, 'dice')} | {_fmt(m, 'iou')} | {m['hd95']['mean']:.1f} | "
            f"{paper['dice'] * 100:.1f} | "
            f"{state['best_val_dice'] * 100:.1f} @ {state['best_step']}{start_text} | "
            f"{state['step']} | {timing['train_s'] / 60:.1f} + {timing['eval_s'] / 60:.1f} |")
        commands += [f"# {label}", timing["train_cmd"], timing["eval_cmd"]]
    split = json.loads(Path(args.split_file).read_text())
    header = RESULTS_HEADER.format(
        machine=machine(), n_train=len(split["train"]), n_val=len(split["val"]), n_test=len(split["test"]),
        split_file=os.path.relpath(args.split_file, REPO),
        script=(out / "invocation.txt").read_text().strip() if (out / "invocation.txt").exists() else "n/a",
    )
    table = ("| run | test Dice % [95% CI] | test IoU % [95% CI] | HD95 px | paper-style Dice % "
             "| best val Dice % @ step | steps | wall min (train + eval) |\n|---|---|---|---|---|---|---|---|\n"
             + "\n".join(rows))
    results.parent.mkdir(parents=True, exist_ok=True)
    tmp = results.with_name(f".{results.name}.tmp")
    text = (header + "\n" + table + "\n\n" + RESULTS_NOTES + "\n## Commands\n\n```bash\n" + "\n".join(commands)
            + "\n```\n")
    # paths relative to the repository (and ../shared), as a user would type them
    text = text.replace(str(REPO.parent / "shared"), "../shared").replace(str(REPO) + "/", "")
    tmp.write_text(text + MANUAL_SECTION.format(existing=_manual(results)))
    tmp.replace(results)
    print(f"wrote {results}")


def _manual(results: Path) -> str:
    """Keep the hand-written analysis (after the marker) when the table is regenerated."""
    if results.exists():
        text = results.read_text()
        if MARKER in text:
            return text.split(MARKER, 1)[1].strip("\n")
    return "(to be written after looking at the numbers)"


MARKER = "<!-- analysis: kept when the script rewrites this file -->"

RESULTS_HEADER = """# Results: the LEAF ablation at CPU scale on CVC-ClinicDB

Produced by `benchmarks/ablation.py` (invocation: `{script}`); regenerate the table with
`.venv/bin/python benchmarks/ablation.py --report-only`.

- Machine: {machine}.
- Data: `../shared/data/cvc-clinicdb` (612 frames, 384x288), split file `{split_file}`
  (sorted stems, seeded shuffle, seed 0): {n_train} train / {n_val} val / {n_test} test.
- Every LEAF run: the `cpu-small` config (TAEF2 autoencoder at 128x128 -> 16x16x32 latents, LiteMedSAM TinyViT
  teacher on 128x128 inputs with mirrored tokens for flips, UNet [64, 128, 128], batch 4, lr 2e-4, EMA), only the
  target and the alignment switch differ. The supervised UNet: diffusers UNet2DModel [32, 64, 128, 256] on the
  128x128 image, soft Dice + BCE, same batches, flips, lr, EMA and step budget.
- Selection: model-best = highest val Dice (EMA weights, single step, at 128x128) among the validations; the test
  split is touched only by the final `leafseg evaluate`, once per run, at each image's original size (single step,
  seed 0).
"""

RESULTS_NOTES = """Columns: per-image foreground Dice and IoU on the test split, mean with a 95% percentile-bootstrap
CI (2000 resamples of the images); HD95 in pixels at the original 384x288; "paper-style Dice" the number to put
beside the paper's tables: per-image foreground Dice at the processing resolution with both-empty images scored 0,
what the authors' torchmetrics call computes on their single-channel input; best val Dice and its step ("start":
the untrained model). Definitions: README, "What the numbers mean".
"""

MANUAL_SECTION = "\n" + MARKER + "\n\n{existing}\n"


if __name__ == "__main__":
    main()
