"""nnU-Net v2 as the reference peer: a leafseg dataset and split file in, nnU-Net's own plan, 2D training under a
wall-time budget, prediction of the test split, and `leafseg score` on it.

nnU-Net runs in its own virtual environment (benchmarks/peers/.venv-nnunet, from requirements-nnunet.txt): it needs
torchvision, which must never enter leafseg's. This script runs in leafseg's environment (it reads the data with
leafseg's layouts and mask rules, and scores with `leafseg score`) and calls nnU-Net's commands in the other one.

    python benchmarks/peers/nnunet.py setup                     # the nnU-Net venv + the budget trainer (once)
    python benchmarks/peers/nnunet.py convert --data ../shared/data/cvc-clinicdb --layout cvc-clinicdb \\
        --split-file benchmarks/splits/cvc-clinicdb.json --id 501 --name CVCClinicDB --work benchmarks/runs/nnunet
    python benchmarks/peers/nnunet.py plan    --id 501 --work benchmarks/runs/nnunet
    python benchmarks/peers/nnunet.py train   --id 501 --work benchmarks/runs/nnunet --budget-min 57
    python benchmarks/peers/nnunet.py predict --id 501 --work benchmarks/runs/nnunet \\
        --record experiments/peers/records/57min/nnunet.json                          # test split, then scored
    python benchmarks/peers/nnunet.py predict --id 501 --work benchmarks/runs/nnunet --data ../shared/data/kvasir-seg \\
        --layout kvasir-seg --set-name kvasir_all --record experiments/peers/records/57min/nnunet.json
    python benchmarks/peers/nnunet.py all ...                   # convert, plan, train, predict in a row

Trainer: `nnUNetTrainerBudget` (nnunet_budget_trainer.py), nnU-Net's default `nnUNetTrainer` (its plan, data
augmentation, SGD with poly learning rate, Dice + CE with deep supervision, 250 iterations an epoch) with one change:
after the first epoch it measures the epoch time and trains as many epochs as fit in the budget, the poly schedule
stretched to them (as `leafseg train` does with `train.time_budget_min`). The split is leafseg's: nnU-Net's fold 0
is the split file's train / val, and the test split is predicted once, with nnU-Net's default mirroring.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-nnunet"
TRAINER = "nnUNetTrainerBudget"


def _bin(name: str) -> str:
    path = VENV / "bin" / name
    if not path.exists():
        raise SystemExit(f"{path}: not found; run `python {Path(__file__).name} setup` first")
    return str(path)


def dataset_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


def nnunet_env(work: Path) -> dict:
    """nnU-Net's three folders under ``work``, one data-augmentation worker (2 cores), no compile on the CPU."""
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / "results"))
    env.setdefault("nnUNet_n_proc_DA", "1")
    env.setdefault("nnUNet_compile", "false")
    return env


def setup(_args) -> None:
    """The nnU-Net venv (requirements-nnunet.txt) and the budget trainer placed where nnU-Net finds trainers."""
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "-r",
                    str(HERE / "requirements-nnunet.txt")], check=True)
    package = subprocess.run([str(VENV / "bin" / "python"), "-c",
                              "import nnunetv2.training.nnUNetTrainer as t, os; print(os.path.dirname(t.__file__))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    target = Path(package) / "variants" / "leafseg"
    target.mkdir(parents=True, exist_ok=True)
    (target / "__init__.py").touch()
    shutil.copy(HERE / "nnunet_budget_trainer.py", target / f"{TRAINER}.py")
    print(f"nnU-Net environment ready: {VENV}; trainer {TRAINER} in {target}")


def convert(args) -> Path:
    """The dataset as an nnU-Net raw dataset: RGB PNG images (``_0000``, channels R, G, B: z-scored by nnU-Net),
    0/1 PNG labels read by leafseg's mask rules, the test split in imagesTs (its labels in labelsTs, for scoring),
    and leafseg's train/val split as nnU-Net's fold 0 (splits_final.json)."""
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    from leafseg import data as D

    work = Path(args.work)
    raw = work / "raw" / dataset_name(args.id, args.name)
    if raw.exists():
        raise SystemExit(f"{raw}: exists; remove it to convert again")
    pairs = D.find_dataset(args.data, args.layout)
    split = D.read_split(args.split_file, [p.stem for p in pairs])
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (raw / sub).mkdir(parents=True)
    for part, (images, labels) in {"train": ("imagesTr", "labelsTr"), "val": ("imagesTr", "labelsTr"),
                                   "test": ("imagesTs", "labelsTs")}.items():
        for pair in D.select(pairs, split[part]):
            image, mask = D.load_image(pair.image), D.load_mask(pair.mask, pair.mask_rule)
            if image.shape[:2] != mask.shape:
                raise SystemExit(f"{pair.image}: image {image.shape[:2]} and mask {mask.shape} differ in size")
            Image.fromarray(image).save(raw / images / f"{pair.stem}_0000.png")
            Image.fromarray(mask.astype(np.uint8)).save(raw / labels / f"{pair.stem}.png")
    n_train = len(split["train"]) + len(split["val"])
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "foreground": 1},
        "numTraining": n_train, "file_ending": ".png",
        "leafseg": {"data": str(args.data), "layout": args.layout, "split_file": str(args.split_file)}}, indent=2))
    pre = work / "preprocessed" / dataset_name(args.id, args.name)
    pre.mkdir(parents=True, exist_ok=True)
    (pre / "splits_final.json").write_text(json.dumps([{"train": split["train"], "val": split["val"]}], indent=2))
    print(f"{raw}: {n_train} training cases ({len(split['train'])} train, {len(split['val'])} val = fold 0), "
          f"{len(split['test'])} test cases")
    return raw


def plan(args) -> None:
    """nnU-Net's fingerprint, plan and preprocessing, 2D only."""
    subprocess.run([_bin("nnUNetv2_plan_and_preprocess"), "-d", str(args.id), "-c", "2d", "-np", "1",
                    "--verify_dataset_integrity"], check=True, env=nnunet_env(Path(args.work)))


def train(args) -> None:
    """nnUNetTrainerBudget, 2D, fold 0 (leafseg's train / val), on ``--device``."""
    env = nnunet_env(Path(args.work))
    env["LEAFSEG_NNUNET_BUDGET_MIN"] = str(args.budget_min)
    env["LEAFSEG_NNUNET_ITERATIONS"] = str(args.iterations)
    (Path(args.work) / "train_cmd.txt").write_text(" ".join(["python", *sys.argv]) + "\n")  # for the record
    subprocess.run([_bin("nnUNetv2_train"), str(args.id), "2d", "0", "-tr", TRAINER, "-device", args.device],
                   check=True, env=env)


def _write_cases(pairs, images: Path, labels: Path) -> None:
    """Images as nnU-Net inputs (``<stem>_0000.png``, RGB) and their masks as 0/1 PNG labels (leafseg's rules)."""
    from leafseg import data as D

    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for pair in pairs:
        Image.fromarray(D.load_image(pair.image)).save(images / f"{pair.stem}_0000.png")
        Image.fromarray(D.load_mask(pair.mask, pair.mask_rule).astype(np.uint8)).save(labels / f"{pair.stem}.png")


def predict(args) -> dict:
    """Predict a set with the fold-0 checkpoint and score it with `leafseg score`: the converted test split
    (default), or ``--data`` (``--layout``, ``--split``, ``--split-file``) as the set ``--set-name``, e.g. another
    centre's frames. With ``--record``, the scores join that JSON record (benchmarks/peers/compare.py's format)."""
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    from leafseg import data as D

    work = Path(args.work)
    raw = next((work / "raw").glob(f"Dataset{args.id:03d}_*"))
    if args.command == "predict" and args.data:  # `all` predicts the converted test split (its --data is convert's)
        pairs = D.find_dataset(args.data, args.layout)
        if args.split != "all":
            pairs = D.select(pairs, D.read_split(args.split_file, [p.stem for p in pairs])[args.split])
        images, labels = work / "inputs" / args.set_name / "images", work / "inputs" / args.set_name / "labels"
        if not images.exists():
            _write_cases(pairs, images, labels)
    else:
        images, labels = raw / "imagesTs", raw / "labelsTs"
    out = work / "predictions" / raw.name / args.set_name
    started = time.time()
    subprocess.run([_bin("nnUNetv2_predict"), "-i", str(images), "-o", str(out), "-d", str(args.id), "-c", "2d",
                    "-f", "0", "-tr", TRAINER, "-chk", args.checkpoint, "-device", args.device],
                   check=True, env=nnunet_env(work))
    scores = work / "scores" / raw.name / args.set_name
    leafseg = Path(sys.executable).with_name("leafseg")
    subprocess.run([str(leafseg), "score", "--pred", str(out), "--gt", str(labels), "--output", str(scores),
                    "--overwrite"], check=True)
    summary = json.loads((scores / "summary.json").read_text())
    if args.record:
        _add_to_record(Path(args.record), args, raw, scores, summary, time.time() - started)
    return summary


def _add_to_record(record_file: Path, args, raw: Path, scores: Path, summary: dict, seconds: float) -> None:
    sys.path.insert(0, str(HERE.parent))
    from ablation import per_image_dice

    record = json.loads(record_file.read_text()) if record_file.exists() else {
        "method": "nnunet", "label": "nnU-Net v2 2D (nnUNetTrainerBudget, native resolution, mirroring TTA)",
        "sets": {}}
    log = sorted((work_results(Path(args.work), raw) / "fold_0").glob("training_log_*.txt"))
    text = log[-1].read_text() if log else ""
    budget = [line for line in text.splitlines() if "budget:" in line]
    record.update(steps=budget[-1].split("budget:")[-1].strip() if budget else "see nnU-Net's training log",
                  best_val_dice=None, best_step=None)
    record["commit"], record["machine"] = _commit_and_machine()
    train_cmd = Path(args.work) / "train_cmd.txt"
    record["train_cmd"] = train_cmd.read_text().strip() if train_cmd.exists() else "see nnU-Net's training log"
    m = summary["metrics"]
    record["sets"][args.set_name] = {"dice": m["dice"], "iou": m["iou"], "hd95": m["hd95"],
                                     "per_image_dice": per_image_dice(scores / "per_image.csv"),
                                     "eval_s": round(seconds, 1),
                                     "eval_cmd": " ".join(sys.argv)}
    record_file.parent.mkdir(parents=True, exist_ok=True)
    record_file.write_text(json.dumps(record, indent=2) + "\n")


def work_results(work: Path, raw: Path) -> Path:
    return work / "results" / raw.name / f"{TRAINER}__nnUNetPlans__2d"


def _commit_and_machine() -> tuple[str, str]:
    """The repository's commit (+changes) and the machine, as every benchmark record names them."""
    sys.path.insert(0, str(HERE.parent))
    from ablation import commit, machine

    return commit(), machine()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    commands = {"setup": setup, "convert": convert, "plan": plan, "train": train, "predict": predict}
    for name in [*commands, "all"]:
        p = sub.add_parser(name)
        if name == "setup":
            continue
        p.add_argument("--id", type=int, required=True, help="nnU-Net dataset id (e.g. 501)")
        p.add_argument("--work", required=True, help="folder for nnU-Net's raw, preprocessed and results folders")
        if name in ("convert", "all"):
            p.add_argument("--data", required=True)
            p.add_argument("--layout", default="folder")
            p.add_argument("--split-file", required=True)
            p.add_argument("--name", required=True, help="dataset name (letters and digits)")
        if name in ("train", "predict", "all"):
            p.add_argument("--device", default="cpu")
        if name in ("train", "all"):
            p.add_argument("--budget-min", type=float, default=57.0, help="wall minutes for the training epochs")
            p.add_argument("--iterations", type=int, default=250,
                           help="iterations an epoch (nnU-Net's 250; fewer on a CPU, where one epoch of 250 can "
                                "outlast the budget)")
        if name in ("predict", "all"):
            p.add_argument("--checkpoint", default="checkpoint_best.pth",
                           help="nnU-Net's best-on-val (pseudo Dice) or checkpoint_final.pth")
            p.add_argument("--set-name", default="cvc_test", help="name of the predicted set in the record")
            p.add_argument("--record", default=None, help="JSON record the scores join (compare.py's format)")
        if name == "predict":
            p.add_argument("--data", default=None, help="another dataset to predict (default: the test split)")
            p.add_argument("--layout", default="folder")
            p.add_argument("--split", default="all", choices=("train", "val", "test", "all"))
            p.add_argument("--split-file", default=None)
    args = ap.parse_args(argv)
    if args.command == "all":
        for step in ("convert", "plan", "train", "predict"):
            commands[step](args)
    else:
        commands[args.command](args)


if __name__ == "__main__":
    main()
