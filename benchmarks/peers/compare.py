"""LEAF against the networks users would otherwise train, at one wall-time budget on one machine, scored by one rule.

Every method trains with `leafseg train` on the same engine, recipe (`cpu`: 128 px, batch 4, AdamW 2e-4 with
warm-up and cosine schedule, EMA, flips), data (one dataset's committed train split, model chosen on its val split)
and `train.time_budget_min`; only the network and its loss differ:

    leaf        the `cpu` recipe (LEAF, TAEF2 mask autoencoder, LiteMedSAM teacher)
    dynunet     MONAI DynUNet in nnU-Net v2's 2D topology, Dice + CE with deep supervision
    basicunet   MONAI BasicUNet, Dice + CE
    unet2d      the old baseline: diffusers UNet2DModel at timestep 0, soft Dice + BCE

Trained on CVC-ClinicDB (`--train-on cvc`, the default), each is judged once on CVC-ClinicDB test (122) and on all
1000 Kvasir-SEG frames (another centre, never seen); trained on Kvasir-SEG (`--train-on kvasir`), on Kvasir-SEG test
(100) and on all 612 CVC-ClinicDB frames. Paired bootstrap differences against LEAF over the same images. nnU-Net
itself (its own trainer, native resolution, in its own environment) is `benchmarks/peers/nnunet.py`; its record
joins the table when present.

    .venv/bin/python benchmarks/peers/compare.py --budget-min 15       # every method not recorded yet
    .venv/bin/python benchmarks/peers/compare.py --budget-min 15 --train-on kvasir
    .venv/bin/python benchmarks/peers/compare.py --report-only

Records: --records/<budget>min[-kvasir]/<method>.json (default experiments/peers/records; committed as they
come); report: --report (default experiments/peers/README.md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from run_records import (MARKER, commit, leafseg, machine, manual_analysis, paired_bootstrap,  # noqa: E402
                         per_image_dice, relative, run_logged, run_unrecorded)

SHARED = REPO.parent / "shared"
METHODS = {  # name: (label, overrides on the cpu recipe)
    "leaf": ("LEAF (`cpu` recipe)", []),
    "dynunet": ("MONAI DynUNet, nnU-Net 2D topology (Dice + CE, deep supervision)", ["method=dynunet"]),
    "basicunet": ("MONAI BasicUNet (Dice + CE)", ["method=basicunet"]),
    "unet2d": ("diffusers UNet2DModel baseline (Dice + BCE)", ["method=supervised_unet"]),
}
CVC = (SHARED / "data" / "cvc-clinicdb", "cvc-clinicdb", REPO / "benchmarks" / "splits" / "cvc-clinicdb.json")
KVASIR = (SHARED / "data" / "kvasir-seg", "kvasir-seg", REPO / "benchmarks" / "splits" / "kvasir-seg.json")
SETS = {  # name: (data, layout, split, split file or None)
    "cvc_test": (*CVC[:2], "test", CVC[2]),
    "kvasir_all": (*KVASIR[:2], "all", None),
    "kvasir_test": (*KVASIR[:2], "test", KVASIR[2]),
    "cvc_all": (*CVC[:2], "all", None),
}
SOURCES = {  # --train-on: (title, training data, record folder suffix, [in-domain test set, other centre's set])
    "cvc": ("CVC-ClinicDB", CVC, "", ["cvc_test", "kvasir_all"]),
    "kvasir": ("Kvasir-SEG", KVASIR, "-kvasir", ["kvasir_test", "cvc_all"]),
}
SET_TITLES = {"cvc_test": "CVC-ClinicDB test", "kvasir_all": "Kvasir-SEG all 1000",
              "kvasir_test": "Kvasir-SEG test", "cvc_all": "CVC-ClinicDB all 612"}


def run_method(name: str, args, out: Path, records: Path) -> None:
    run_dir = out / name
    _, (root, layout, split_file), _, sets = SOURCES[args.train_on]
    train_cmd = [leafseg(), "train", "--config", "cpu", "--output", str(run_dir),
                 f"data.root={root}", f"data.layout={layout}",
                 f"data.split_file={split_file}", f"autoencoder.path={SHARED / 'weights' / 'taef2'}",
                 f"train.time_budget_min={args.budget_min}", *METHODS[name][1]]
    log = out / f"{name}.log"
    timing = {"commit": commit(), "train_cmd": shlex.join(train_cmd)}
    resume = ["--resume"] if (run_dir / "checkpoint-last").exists() else []
    print(f"{name}: training{' (resumed)' if resume else ''}", flush=True)
    timing["train_s"] = run_logged(train_cmd[:2] + resume + train_cmd[2:], log)
    state = json.loads((run_dir / "checkpoint-last" / "trainer_state.json").read_text())
    record = {"method": name, "label": METHODS[name][0], "budget_min": args.budget_min, "train_on": args.train_on,
              "steps": state["step"],
              "best_val_dice": state["best_val_dice"], "best_step": state["best_step"],
              "train_s": round(timing["train_s"], 1), "train_cmd": relative(timing["train_cmd"]),
              "commit": timing["commit"], "machine": machine(), "sets": {}}
    for set_name in sets:
        data, layout, split, split_file = SETS[set_name]
        eval_dir = run_dir / f"eval-{set_name}"
        cmd = [leafseg(), "evaluate", "--model", str(run_dir / "model-best"), "--data", str(data), "--layout",
               layout, "--split", split, *(["--split-file", str(split_file)] if split_file else []),
               "--output", str(eval_dir), "--overwrite"]
        print(f"{name}: evaluating {set_name}", flush=True)
        seconds = run_logged(cmd, log)
        m = json.loads((eval_dir / "summary.json").read_text())["metrics"]
        record["sets"][set_name] = {"dice": m["dice"], "iou": m["iou"], "hd95": m["hd95"],
                                    "per_image_dice": per_image_dice(eval_dir / "per_image.csv"),
                                    "eval_s": round(seconds, 1), "eval_cmd": relative(shlex.join(cmd))}
    records.mkdir(parents=True, exist_ok=True)
    (records / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{name}: " + ", ".join(f"{s} Dice {v['dice']['mean']:.4f}" for s, v in record["sets"].items()), flush=True)


def _cell(s: dict | None) -> str:
    if not s:
        return "not run"
    d = s["dice"]
    return f"{d['mean']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"


def _diff(rec: dict, leaf: dict | None, set_name: str) -> str:
    if rec is leaf or not leaf or set_name not in rec.get("sets", {}) or set_name not in leaf["sets"]:
        return ""
    a, b = rec["sets"][set_name]["per_image_dice"], leaf["sets"][set_name]["per_image_dice"]
    lo, hi = paired_bootstrap(a, b)
    mean = rec["sets"][set_name]["dice"]["mean"] - leaf["sets"][set_name]["dice"]["mean"]
    return f" ({100 * mean:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}])"


def _table(records: Path, source: str) -> tuple[str, list[dict]]:
    """One section: the methods trained on ``source``, each on its in-domain test set and the other centre's."""
    title, (_, _, split_file), _, sets = SOURCES[source]
    recs = {p.stem: json.loads(p.read_text()) for p in sorted(records.glob("*.json"))}
    leaf = recs.get("leaf")
    rows = []
    for name in [*METHODS, "nnunet"]:
        r = recs.get(name)
        if r is None:
            label = METHODS[name][0] if name in METHODS else "nnU-Net v2 2D (own trainer, budgeted)"
            rows.append(f"| {label} | not run | | | |")
            continue
        best = "n/a" if r.get("best_val_dice") is None else f"{r['best_val_dice']:.3f}"
        skipped = r.get("not_run", {})  # set name -> why it was not predicted
        cells = " | ".join(f"not run: {skipped[s]}" if s in skipped and s not in r["sets"] else
                           f"{_cell(r['sets'].get(s))}{_diff(r, leaf, s)}" for s in sets)
        rows.append(f"| {r['label']} | {r['steps']} | {best} | {cells} |")
    splits = json.loads(split_file.read_text())
    n = {k: len(splits[k]) for k in ("train", "val", "test")}
    machines = sorted({r["machine"] for r in recs.values()})
    text = f"""## Trained on {title}

Records: `{relative(str(records))}`. Machine(s): {'; '.join(machines) or 'n/a'}.

Trained on {title}'s committed train split ({n['train']} frames), model chosen on its val split ({n['val']}), then
judged once on {SET_TITLES[sets[0]]} ({n['test']} frames) and on {SET_TITLES[sets[1]]} (the other dataset: another
centre, never seen in training).

| method | steps in the budget | best val Dice | {SET_TITLES[sets[0]]} (vs LEAF) | {SET_TITLES[sets[1]]} (vs LEAF) |
|---|---|---|---|---|
{chr(10).join(rows)}
"""
    return text, list(recs.values())


def write_report(root: Path, report: Path, budget: float) -> None:
    tag = f"{budget:g}min"
    sections, recs = [], []
    for source, (_, _, suffix, _) in SOURCES.items():
        records = root / f"{tag}{suffix}"
        if records.is_dir() or source == "cvc":
            text, r = _table(records, source)
            sections.append(text)
            recs += r
    text = f"""# leafseg against its peers at one wall-time budget

*Rebuilt from the records under `{relative(str(root))}` by `benchmarks/peers/compare.py --budget-min {budget:g}
--report-only`.*

Every method trained by `leafseg train --config cpu` with `train.time_budget_min={budget:g}` (caches included) on one
dataset, then judged once on that dataset's test split and on all frames of the other dataset. Per-image foreground
Dice at the original size [95% bootstrap CI]; in brackets after it, the difference to LEAF in Dice points with its
paired bootstrap 95% CI over the same images (positive: the peer is better).

{chr(10).join(sections)}
Commands (each record keeps its own, with the commit it trained at):

```bash
{chr(10).join(r['train_cmd'] + chr(10) + chr(10).join(s['eval_cmd'] for s in r['sets'].values())
              for r in recs)}
```
"""
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text + "\n" + MARKER + "\n\n" + manual_analysis(report) + "\n")
    print(f"wrote {relative(str(report))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-min", type=float, default=15.0, help="train.time_budget_min of every method")
    ap.add_argument("--only", nargs="*", choices=sorted(METHODS), default=None)
    ap.add_argument("--train-on", choices=sorted(SOURCES), default="cvc", help="the dataset every method trains on")
    ap.add_argument("--out", default=None, help="run folders (default benchmarks/runs/peers-<budget>min[-kvasir])")
    ap.add_argument("--records", default=str(REPO / "experiments" / "peers" / "records"),
                    help="folder of the records, one sub-folder per budget and training source")
    ap.add_argument("--report", default=str(REPO / "experiments" / "peers" / "README.md"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    tag = f"{args.budget_min:g}min{SOURCES[args.train_on][2]}"
    out = Path(args.out or REPO / "benchmarks" / "runs" / f"peers-{tag}")
    root = Path(args.records)
    records = root / tag
    out.mkdir(parents=True, exist_ok=True)
    run_unrecorded([] if args.report_only else (args.only or list(METHODS)), records,
                   lambda name: run_method(name, args, out, records))
    write_report(root, Path(args.report), args.budget_min)


if __name__ == "__main__":
    main()
