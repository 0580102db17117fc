"""Digest of the weights a short real training writes, to show that a refactor leaves the numbers alone.

Trains `cpu-small` and `cpu-polyp` (fixed step counts, no time budget) on a subset of CVC-ClinicDB's committed
split, with validation and checkpoints inside the run so that those code paths take part, and prints one sha256 per
weights file of model-last and model-best, plus the logged losses. Run it at two commits on the same machine and
compare the outputs: equal digests mean bit-identical weights. The digests go to OUT_DIR/digest.json (the
trainings' own lines to the console).

    python experiments/refactor-parity/weights_digest.py OUT_DIR
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from leafseg.config import load_config
from leafseg.training import train

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LEAFSEG_SHARED", ROOT.parent / "shared"))
CVC = SHARED / "data" / "cvc-clinicdb"
TAEF2 = SHARED / "weights" / "taef2"

RECIPES = {
    "cpu-small": ["train.max_steps=40", "train.val_every=20", "train.checkpoint_every=20", "train.log_every=10"],
    "cpu-polyp": ["train.max_steps=40", "train.val_every=20", "train.checkpoint_every=20", "train.log_every=10",
                  "train.time_budget_min=null", "train.warmup_steps=10"],
}


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(folder.rglob("*.safetensors"))}


def main(out: Path) -> None:
    committed = json.loads((ROOT / "benchmarks" / "splits" / "cvc-clinicdb.json").read_text())
    split = out / "split.json"
    out.mkdir(parents=True, exist_ok=True)
    split.write_text(json.dumps({"train": committed["train"][:32], "val": committed["val"][:8], "test": []}))
    report = {}
    for recipe, extra in RECIPES.items():
        cfg = load_config(recipe, [f"run.output_dir={out / recipe}", f"data.root={CVC}", "data.layout=cvc-clinicdb",
                                   f"data.split_file={split}", f"autoencoder.path={TAEF2}", *extra])
        result = train(cfg)
        report[recipe] = {
            "losses": [round(h["loss"], 6) for h in result.history if "loss" in h],
            "val_dice": [round(h["val_dice"], 6) for h in result.history if "val_dice" in h],
            "model-last": digest(result.run_dir / "model-last"),
            "model-best": digest(result.run_dir / "model-best"),
        }
    (out / "digest.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
