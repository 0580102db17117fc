"""One record (JSON) of a finished polyp-recipe run for experiments/polyp-recipe/records/: what was trained, the val curve per
dataset, the run's own timings, and the evaluations of its model-best with each image's Dice, read from the run
folder and the evaluation folders `leafseg evaluate` wrote. Nothing is recomputed here.

    python experiments/polyp-recipe/polyp_record.py --run /work/runs/polyp-p0 --name P0 --commit 7446a2c --command "leafseg ..." \
        --what "cpu on CVC-ClinicDB + Kvasir-SEG, no augmentation" \
        --machine "Intel Xeon (family 6 model 167, AVX-512 bf16, AMX), 2 cores, torch 2.13.0+cpu" \
        --eval cvc_test=/work/runs/polyp-p0/eval-cvc-test kvasir_test=/work/runs/polyp-p0/eval-kvasir-test \
        --out experiments/polyp-recipe/records/P0.json

Two records' evaluations of the same sets, paired image by image (as `leafseg compare` pairs two evaluation
folders; records keep per-image Dice from 2026-12-04 on, so a later run can be paired with an earlier one whose run
folder is gone):

    python experiments/polyp-recipe/polyp_record.py --pair experiments/polyp-recipe/records/X2overlay.json experiments/polyp-recipe/records/X2.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from leafseg.evaluation.compare import compare_values, read_per_image


def val_curve(run: Path) -> list[dict]:
    rows = list(csv.DictReader(open(run / "logs" / "history.csv")))
    keys = [k for k in rows[0] if k.startswith("val_dice_")] if rows else []
    curve = []
    for r in rows:
        if r.get("val_dice"):
            curve.append({"step": int(r["step"]), "val_dice": round(float(r["val_dice"]), 4),
                          **{k.removeprefix("val_dice_"): round(float(r[k]), 4) for k in keys if r.get(k)}})
    return curve


def evaluation(folder: Path) -> dict:
    s = json.loads((folder / "summary.json").read_text())
    m = s["metrics"]
    out = {"n": s["n_images"], "dice": round(m["dice"]["mean"], 4),
           "ci": [round(m["dice"]["ci_low"], 4), round(m["dice"]["ci_high"], 4)], "iou": round(m["iou"]["mean"], 4),
           "hd95": None if m["hd95"]["mean"] is None else round(m["hd95"]["mean"], 2), "empty": m["empty"],
           "data": s["data"], "split": s["split"], "split_file": s["split_file"]}
    if m.get("with_object", {}).get("n_images"):
        out["with_object_dice"] = round(m["with_object"]["dice"]["mean"], 4)
    out["per_image_dice"] = read_per_image(folder, digits=6)
    return out


def pair(a: dict, b: dict) -> list[str]:
    """Record a's evaluations minus record b's, per set both evaluated with per-image Dice: table rows in points."""
    rows = []
    for name in a["evaluation"]:
        ea, eb = a["evaluation"][name], b["evaluation"].get(name)
        if not eb or "per_image_dice" not in ea or "per_image_dice" not in eb:
            continue
        c = compare_values(ea["per_image_dice"], eb["per_image_dice"])
        rows.append(f"| {name} | {c['n']} | {c['mean_a']:.4f} | {c['mean_b']:.4f} | {100 * c['difference']:+.1f} "
                    f"[{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}] | {c['a_better']} / {c['b_better']} |")
    if not rows:
        raise SystemExit(f"{a['run']} and {b['run']}: no set evaluated in both with per-image Dice")
    return [f"| set | n | {a['run']} | {b['run']} | {a['run']} - {b['run']}, paired [95% CI] | images better |",
            "|---|---|---|---|---|---|", *rows]


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--pair"]:
        if len(argv) != 3:
            raise SystemExit("usage: polyp_record.py --pair A.json B.json")
        a, b = (json.loads(Path(f).read_text()) for f in argv[1:])
        print("\n".join(pair(a, b)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--what", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--eval", nargs="*", default=[], metavar="NAME=DIR")
    ap.add_argument("--command", required=True, help="the leafseg train command line of the run")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    state = json.loads((args.run / "checkpoint-last" / "trainer_state.json").read_text())
    timings = json.loads((args.run / "logs" / "timings.json").read_text())
    config = (args.run / "config.yaml").read_text()
    record = {
        "run": args.name, "what": args.what, "commit": args.commit, "machine": args.machine,
        "command": args.command,
        "config_yaml": config, "budget_steps": state.get("budget_steps"), "steps": state["step"],
        "best_step": state["best_step"], "best_val_dice": round(state["best_val_dice"], 4),
        "val_curve": val_curve(args.run), "timings": timings,
        "evaluation": {name: evaluation(Path(folder)) for name, folder in (e.split("=", 1) for e in args.eval)},
        "note": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{args.out}: best val {record['best_val_dice']} @ {record['best_step']} of {record['steps']}; "
          + ", ".join(f"{k} {v['dice']}" for k, v in record["evaluation"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
