"""The LEAF ablation (target x alignment, with seeds) plus a supervised UNet baseline, on CVC-ClinicDB, on a CPU.

Every run: one packaged recipe (default `cpu`) at its own step budget (unless --steps), the committed split file
(benchmarks/splits/cvc-clinicdb.json), selection of model-best on the val split, then `leafseg evaluate` once on the
test split. x0 and x0 + alignment (the paper's central claim) run with 3 training seeds, the other variants with 1;
the seeded pairs run first, seed by seed (x0 + alignment, then x0), so that a partial ablation already pairs them.

Each finished run leaves a small record, `experiments/ablation/records-<recipe>/<run>.json` (commands, wall times,
val curve, test metrics, the run's wall-time split), which is meant to be committed as it comes: a later invocation
skips every run that has a record, and an interrupted run resumes from its checkpoint (`--resume`) while its run
folder exists. The report, experiments/ablation/README.md, is rebuilt from the records alone. (Two earlier ablations are kept beside
it: at the recipe of experiment E1 -- teacher at 128 px, 3000 steps, torch caches -- in experiments/ablation/results-e1.md with its
records in experiments/ablation/records-e1/, and at today's recipe cut to 3600 steps in experiments/ablation/results-3600.md with
its records in experiments/ablation/records-3600/.)

    .venv/bin/python experiments/ablation/ablation.py                    # every run not recorded yet, one at a time (hours)
    .venv/bin/python experiments/ablation/ablation.py --only x0-align-s0 # one run
    .venv/bin/python experiments/ablation/ablation.py --report-only      # rewrite experiments/ablation/README.md from the records
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from leafseg.config import load_config

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from run_records import (MARKER, commit, leafseg, machine, manual_analysis, paired_bootstrap,  # noqa: E402
                         per_image_dice, relative, run_logged, run_unrecorded)

VARIANTS = {  # name: (label, overrides, seeds)
    "x0-align": ("x0 + alignment (LEAF)", ["diffusion.prediction_type=sample", "align.enabled=true"], (0, 1, 2)),
    "x0": ("x0, no alignment", ["diffusion.prediction_type=sample", "align.enabled=false"], (0, 1, 2)),
    "v-align": ("v + alignment", ["diffusion.prediction_type=v_prediction", "align.enabled=true"], (0,)),
    "v": ("v, no alignment", ["diffusion.prediction_type=v_prediction", "align.enabled=false"], (0,)),
    "eps-align": ("ε + alignment", ["diffusion.prediction_type=epsilon", "align.enabled=true"], (0,)),
    "eps": ("ε, no alignment", ["diffusion.prediction_type=epsilon", "align.enabled=false"], (0,)),
    "unet": ("supervised UNet (Dice + BCE)", ["method=supervised_unet"], (0,)),
}
# The order they run in: the seeded pairs first, seed by seed (x0 + alignment and x0: the paper's central claim), so
# that a partial ablation already pairs them; then the single-seed variants.
RUNS = {f"{v}-s{seed}": (v, seed) for v, seed in sorted(
    ((v, seed) for v, (_, _, seeds) in VARIANTS.items() for seed in seeds),
    key=lambda vs: (len(VARIANTS[vs[0]][2]) == 1, vs[1], list(VARIANTS).index(vs[0])))}


def run_one(name: str, args, out: Path, records: Path) -> None:
    variant, seed = RUNS[name]
    run_dir = out / name
    common = [f"data.root={args.data}", "data.layout=cvc-clinicdb", f"data.split_file={args.split_file}",
              f"autoencoder.path={args.taef2}", f"run.cache_dir={out / 'cache'}", f"run.seed={seed}",
              # one cache folder: every run of the ablation trains on the same frozen targets
              *([f"run.cache_backend={args.cache_backend}"] if args.cache_backend else []),
              *([f"train.max_steps={args.steps}"] if args.steps else []),
              "train.time_budget_min=null",  # a fixed step count: variants compared at equal steps on any CPU
              *([f"train.num_threads={args.threads}"] if args.threads else []), *args.override]
    train_cmd = [leafseg(), "train", "--config", args.recipe, "--output", str(run_dir), *common,
                 *VARIANTS[variant][1]]
    log = out / f"{name}.log"
    partial = run_dir / "benchmark-timing.json"
    timing = json.loads(partial.read_text()) if partial.exists() else {"train_s": 0.0}
    if (run_dir / "model-last").exists() and "eval_s" in timing:
        pass  # trained and evaluated; only the record is missing
    else:
        resume = ["--resume"] if (run_dir / "checkpoint-last").exists() else []
        timing.setdefault("commit", commit())  # the code it starts training with
        print(f"{name}: training{' (resumed)' if resume else ''}", flush=True)
        timing["train_s"] += run_logged(train_cmd[:2] + resume + train_cmd[2:], log)
        eval_cmd = [leafseg(), "evaluate", "--model", str(run_dir / "model-best"), "--data", args.data,
                    "--layout", "cvc-clinicdb", "--split", "test", "--split-file", args.split_file,
                    "--output", str(run_dir / "eval-test")]
        print(f"{name}: evaluating", flush=True)
        timing["eval_s"] = run_logged(eval_cmd, log)
        timing["train_cmd"], timing["eval_cmd"] = shlex.join(train_cmd), shlex.join(eval_cmd)
        partial.write_text(json.dumps(timing, indent=2))
    state = json.loads((run_dir / "checkpoint-last" / "trainer_state.json").read_text())
    timings = run_dir / "logs" / "timings.json"  # the training's own split (summed over its processes, if resumed)
    summary = json.loads((run_dir / "eval-test" / "summary.json").read_text())
    m = summary["metrics"]
    record = {
        "run": name, "variant": variant, "label": VARIANTS[variant][0], "seed": seed, "recipe": args.recipe,
        "steps": state["step"], "best_val_dice": state["best_val_dice"], "best_step": state["best_step"],
        "val_curve": [[h["step"], h["val_dice"]] for h in state["history"] if "val_dice" in h],
        "test": {"dice": m["dice"], "iou": m["iou"], "hd95": m["hd95"], "paper_compatible": m["paper_compatible"]},
        "n_test": summary["n_images"], "checkpoint_sha256": summary["checkpoint_sha256"],
        "test_per_image_dice": per_image_dice(run_dir / "eval-test" / "per_image.csv"),
        "train_s": round(timing["train_s"], 1), "eval_s": round(timing["eval_s"], 1),
        "train_timings": json.loads(timings.read_text()) if timings.exists() else None,
        "train_cmd": relative(timing["train_cmd"]), "eval_cmd": relative(timing["eval_cmd"]), "machine": machine(),
        "commit": timing.get("commit", "unknown"),
    }
    records.mkdir(parents=True, exist_ok=True)
    (records / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{name}: test Dice {m['dice']['mean']:.4f}; record {relative(str(records / f'{name}.json'))}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="cpu", help="packaged config of every LEAF run")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cvc-clinicdb"))
    ap.add_argument("--taef2", default=str(REPO.parent / "shared" / "weights" / "taef2"))
    ap.add_argument("--split-file", default=str(REPO / "benchmarks" / "splits" / "cvc-clinicdb.json"))
    ap.add_argument("--out", default=None, help="run folders (default benchmarks/runs/<recipe>-ablation)")
    ap.add_argument("--steps", type=int, default=None, help="train.max_steps of every run (default: the recipe's own)")
    ap.add_argument("--cache-backend", default=None, choices=("torch", "onnx"),
                    help="run.cache_backend of every run (default: the recipe's own)")
    ap.add_argument("--records", default=None,
                    help="folder of the run records (default experiments/ablation/records-<recipe>; the cpu recipe's own at 8500 steps: records-8500)")
    ap.add_argument("--threads", type=int, default=None, help="train.num_threads of every run")
    ap.add_argument("--override", nargs="*", default=[], help="extra key=value for every run")
    ap.add_argument("--only", nargs="*", default=None, choices=sorted(RUNS), help="run a subset")
    ap.add_argument("--results", default=str(HERE / "README.md"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()

    out = Path(args.out or REPO / "benchmarks" / "runs" / f"{args.recipe}-ablation")
    records = Path(args.records) if args.records else default_records(args.recipe)
    out.mkdir(parents=True, exist_ok=True)
    run_unrecorded([] if args.report_only else (args.only or list(RUNS)), records,
                   lambda name: run_one(name, args, out, records))
    write_report(records, Path(args.results), args)


# ------------------------------------------------------------------------------------------------------ report

def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _row(r: dict) -> str:
    t = r["test"]
    ci = f" [{_pct(t['dice']['ci_low'])}, {_pct(t['dice']['ci_high'])}]"
    label = f"{r['label']}{' (see run notes)' if r.get('note') else ''}"
    return (f"| {label} | {r['seed']} | {_pct(t['dice']['mean'])}{ci} | {_pct(t['iou']['mean'])} | "
            f"{t['hd95']['mean']:.1f} | {_pct(t['paper_compatible']['dice'])} | "
            f"{_pct(r['best_val_dice'])} @ {r['best_step']} | {_train_minutes(r)} + {r['eval_s'] / 60:.1f} |")


def _resumed(r: dict) -> bool:
    return len((r.get("train_timings") or {}).get("segments") or []) > 1


def _train_minutes(r: dict) -> str:
    """A resumed run's ``train_s`` holds only its last process (the script's clock of an interrupted process is
    lost with it); the training's own timings sum every process (without their imports): shown, marked *."""
    return f"{r['train_timings']['total_s'] / 60:.0f}*" if _resumed(r) else f"{r['train_s'] / 60:.0f}"


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{_pct(values[0])} (1 seed)"
    return f"{_pct(statistics.mean(values))} ± {_pct(statistics.stdev(values))} ({len(values)} seeds)"


def write_report(records: Path, results: Path, args) -> None:
    recs = {p.stem: json.loads(p.read_text()) for p in sorted(records.glob("*.json"))}
    order = sorted(RUNS, key=lambda n: (list(VARIANTS).index(RUNS[n][0]), RUNS[n][1]))  # the table: by variant
    per_run = [_row(recs[n]) if n in recs else f"| {VARIANTS[RUNS[n][0]][0]} | {RUNS[n][1]} | not run yet | | | | "
               f"| |" for n in order]
    summary = []
    for variant, (label, _, _) in VARIANTS.items():
        done = [r for r in recs.values() if r["variant"] == variant]
        if done:
            summary.append(f"| {label} | {_mean_std([r['test']['dice']['mean'] for r in done])} | "
                           f"{_mean_std([r['test']['paper_compatible']['dice'] for r in done])} | "
                           f"{_mean_std([r['best_val_dice'] for r in done])} |")
        else:
            summary.append(f"| {label} | not run yet | | |")
    split = json.loads(Path(args.split_file).read_text())
    steps = " / ".join(str(n) for n in sorted({r["steps"] for r in recs.values()})) or str(args.steps or "its own")
    machines = "; ".join(sorted({r["machine"] for r in recs.values()})) or "n/a"
    text = HEADER.format(recipe=args.recipe, steps=steps, machine=machines, done=len(recs), total=len(RUNS),
                         budget=_budget_words(args, {r["steps"] for r in recs.values()}),
                         n_train=len(split["train"]), n_val=len(split["val"]), n_test=len(split["test"]),
                         records=relative(str(records)), rebuild=_rebuild_command(args, records, results))
    text += ("\n## Mean over training seeds (test Dice %)\n\n| variant | test Dice % | paper-style Dice % | "
             "best val Dice % |\n|---|---|---|---|\n" + "\n".join(summary) + "\n")
    text += _paired_section(recs)
    text += _baseline_section(recs)
    text += ("\n## Every run\n\n| run | seed | test Dice % [95% CI] | test IoU % | HD95 px | paper-style Dice % | "
             "best val Dice % @ step | wall min (train + eval) |\n|---|---|---|---|---|---|---|---|\n"
             + "\n".join(per_run) + "\n\n" + NOTES)
    if any(_resumed(r) for r in recs.values()):
        text += ("* interrupted and resumed: the training's own clock summed over its processes (imports left out), "
                 "not one uninterrupted process's wall time.\n")
    notes = [f"- {r['run']}: {r['note']}" for r in recs.values() if r.get("note")]
    if notes:
        text += "\nRun notes:\n\n" + "\n".join(notes) + "\n"
    text += ("\n## Commands\n\nEach run's commands as the script ran them (from the repository, `.venv` installed), "
             "with the commit it trained at.\n\n```bash\n"
             + "\n".join(f"# {r['run']} (commit {r.get('commit', 'unknown')})\n{r['train_cmd']}\n{r['eval_cmd']}"
                         for r in recs.values()) + "\n```\n")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text + "\n" + MARKER + "\n\n" + manual_analysis(results) + "\n")
    print(f"wrote {relative(str(results))}")


def _paired_ci(a: dict, b: dict) -> str:
    """The paired bootstrap CI of run a minus run b over their test images, in Dice points, as a table cell."""
    if "test_per_image_dice" not in a or "test_per_image_dice" not in b:
        return "n/a (per-image Dice not kept for this pair)"
    lo, hi = paired_bootstrap(a["test_per_image_dice"], b["test_per_image_dice"])
    return f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _paired_section(recs: dict) -> str:
    """Alignment on minus off, per target and training seed (same config, seed and batches otherwise)."""
    rows, deltas = [], {}
    aligned = [(v.removesuffix("-align"), seeds) for v, (_, _, seeds) in VARIANTS.items() if v.endswith("-align")]
    names = {target: VARIANTS[f"{target}-align"][0].split(" ")[0] for target, _ in aligned}  # eps -> ε
    for target, seeds in aligned:
        for seed in seeds:
            on, off = recs.get(f"{target}-align-s{seed}"), recs.get(f"{target}-s{seed}")
            if not (on and off):
                continue
            d_test = on["test"]["dice"]["mean"] - off["test"]["dice"]["mean"]
            d_val = on["best_val_dice"] - off["best_val_dice"]
            deltas.setdefault(target, []).append((d_test, d_val))
            rows.append(f"| {names[target]} | {seed} | {100 * d_test:+.1f} | {_paired_ci(on, off)} | "
                        f"{100 * d_val:+.1f} |")
    if not rows:
        return ""
    for target, ds in deltas.items():
        if len(ds) > 1:
            t, v = [x[0] for x in ds], [x[1] for x in ds]
            rows.append(f"| {names[target]}, mean ± std over {len(ds)} seeds | | {100 * statistics.mean(t):+.1f} ± "
                        f"{100 * statistics.stdev(t):.1f} | | {100 * statistics.mean(v):+.1f} ± "
                        f"{100 * statistics.stdev(v):.1f} |")
    return ("\n## Alignment on minus off, paired by training seed (Dice points)\n\n| target | seed | test Dice | "
            "95% CI (paired bootstrap over test images) | best val Dice |\n|---|---|---|---|---|\n" + "\n".join(rows)
            + "\n\nBoth runs of a pair share the config, the seed (initialisation, batches, flips, noise) and the "
            "frozen targets;\nonly `align.enabled` differs. The CI resamples the test images of that one pair (both "
            "models scored on\nthe same images); it says nothing about the spread over training seeds, which the "
            "mean ± std row does.\n")


def _baseline_section(recs: dict) -> str:
    """LEAF (x0 + alignment) minus the supervised UNet trained with the same seed (same batches and flips)."""
    rows = []
    for rec in sorted(recs.values(), key=lambda r: r["seed"]):
        if rec["variant"] != "unet" or f"x0-align-s{rec['seed']}" not in recs:
            continue
        leaf = recs[f"x0-align-s{rec['seed']}"]
        d_test = leaf["test"]["dice"]["mean"] - rec["test"]["dice"]["mean"]
        rows.append(f"| {rec['seed']} | {100 * d_test:+.1f} | {_paired_ci(leaf, rec)} | "
                    f"{100 * (leaf['best_val_dice'] - rec['best_val_dice']):+.1f} |")
    if not rows:
        return ""
    return ("\n## LEAF minus the supervised UNet, paired by training seed (Dice points)\n\n| seed | test Dice | "
            "95% CI (paired bootstrap over test images) | best val Dice |\n|---|---|---|---|\n" + "\n".join(rows)
            + "\n\nLEAF is x0 + alignment; the UNet trains on the same batches, flips, optimiser, schedule, EMA and "
            "steps.\n")


def default_records(recipe: str) -> Path:
    return HERE / ("records-8500" if recipe == "cpu" else f"records-{recipe}")


def _rebuild_command(args, records: Path, results: Path) -> str:
    """The command that rebuilds ``results`` from ``records`` (the options only where they are not the defaults)."""
    cmd = ".venv/bin/python experiments/ablation/ablation.py --report-only"
    if args.recipe != "cpu":
        cmd += f" --recipe {args.recipe}"
    if records.resolve() != default_records(args.recipe).resolve():
        cmd += f" --records {relative(str(records.resolve()))}"
    if results.resolve() != (HERE / "README.md").resolve():
        cmd += f" --results {relative(str(results.resolve()))}"
    return cmd


def _budget_words(args, record_steps: set[int]) -> str:
    """How the runs' step count relates to the recipe's: its full budget, an explicit --steps, or an earlier budget
    (the recipe's train.max_steps changed after the runs)."""
    if args.steps is not None:
        return f" (--steps {args.steps})"
    recipe_steps = int(load_config(args.recipe, ["data.root=unused"]).train.max_steps)
    if not record_steps or record_steps == {recipe_steps}:
        return ", its full budget"
    ran = " / ".join(str(n) for n in sorted(record_steps))
    return (f" (not the recipe's present train.max_steps {recipe_steps}, which came after these runs; "
            f"`--steps {ran}` re-runs them)")


HEADER = """# Results: the LEAF ablation on CVC-ClinicDB, on a 2-core CPU

Built by `experiments/ablation/ablation.py` from the run records in `{records}/` (one JSON per finished run, committed as
they come); `{rebuild}` rebuilds this file from them.

- Runs recorded: {done} of {total} (a run not recorded yet reads "not run yet" below).
- Machine(s): {machine}.
- Data: `../shared/data/cvc-clinicdb` (612 frames, 384x288), split file `benchmarks/splits/cvc-clinicdb.json`
  (sorted stems, seeded shuffle, seed 0): {n_train} train / {n_val} val / {n_test} test.
- Every LEAF run: the `{recipe}` recipe (`src/leafseg/configs/{recipe}.yaml`) at {steps} steps{budget};
  only the target, the alignment switch and the training seed differ.
  The supervised UNet: diffusers UNet2DModel [32, 64, 128, 256] on the image at the same resolution, soft Dice +
  BCE, the same batches, flips, optimiser, schedule, EMA and step budget.
- Selection: model-best = highest val Dice (EMA weights, single step, at the processing resolution) among the
  validations; the test split is touched only by the final `leafseg evaluate`, once per run, at each image's
  original size (single step, seed 0).
"""

NOTES = """Columns: per-image foreground Dice and IoU on the test split (mean; the bracket is a 95% percentile-bootstrap
CI over the test images for that one model, not over training seeds); HD95 in pixels at the original 384x288;
"paper-style Dice": the number to put beside the paper's tables (per-image foreground Dice at the processing
resolution, both-empty images scored 0, as the authors' torchmetrics call computes it); best val Dice and its step.
Mean ± std over seeds uses the sample standard deviation of the per-run means. Definitions: docs/guide.md, "What
the numbers mean".
"""


if __name__ == "__main__":
    main()
