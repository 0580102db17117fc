"""``leafseg`` command line: train, predict, evaluate, split, demo, convert-ldm.

``leafseg train`` runs the same on one CPU, one GPU or several processes:
``accelerate launch --multi_gpu --num_processes 2 -m leafseg.cli train --config FILE`` (GPUs, or CPU processes
over gloo on a machine without CUDA).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from . import data as D
from .datasets import LAYOUTS
from .evaluation import evaluate, input_files, load_pipeline, overlay, save_png


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=1, help="reverse steps (1 = LEAF single step; >1 = DDIM)")
    p.add_argument("--ensemble", type=int, default=1, help="seeds averaged into a probability map (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def cmd_train(args) -> int:
    from .config import load_config
    from .training import train

    cfg = load_config(args.config, args.overrides)
    if args.output:
        cfg.run.output_dir = args.output
    result = train(cfg, resume=args.resume)
    best = "n/a" if result.best_val_dice is None else f"{result.best_val_dice:.4f} (step {result.best_step})"
    print(f"trained {result.step} steps; best val Dice {best}; models in {result.run_dir}")
    return 0


def cmd_predict(args) -> int:
    from tqdm.auto import tqdm

    pipe = load_pipeline(args.model, args.device)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    files = input_files(args.input)
    for i in tqdm(range(0, len(files), args.batch_size), desc="predicting", disable=len(files) < 2):
        chunk = files[i:i + args.batch_size]
        images = [D.load_image(f) for f in chunk]
        result = pipe(images, num_inference_steps=args.steps, ensemble_size=args.ensemble, seed=args.seed)
        for k, (f, image, mask) in enumerate(zip(chunk, images, result.masks)):
            save_png(mask.astype(np.uint8) * 255, out / f"{f.stem}_mask.png")
            save_png(overlay(image, mask), out / f"{f.stem}_overlay.png")
            if result.uncertainty is not None and args.uncertainty:
                std = result.uncertainty[k]  # std of values in [0, 1]: at most 0.5
                save_png((np.clip(std / 0.5, 0, 1) * 255).astype(np.uint8), out / f"{f.stem}_uncertainty.png")
    print(f"wrote {len(files)} mask(s) and overlay(s) to {out}")
    return 0


def cmd_evaluate(args) -> int:
    result = evaluate(args.model, args.data, args.split, args.split_file, args.output, args.steps, args.ensemble,
                      args.seed, args.batch_size, args.device, layout=args.layout, seeds=args.seeds,
                      worst_k=args.worst, spacing=tuple(args.spacing) if args.spacing else None)
    summary = result["summary"]
    m = summary["metrics"]
    print(f"{summary['n_images']} images: Dice {m['dice']['mean']:.4f} [95% CI {m['dice']['ci_low']:.4f}, "
          f"{m['dice']['ci_high']:.4f}], IoU {m['iou']['mean']:.4f}, HD95 {m['hd95']['mean']:.2f} "
          f"(per-image foreground means at each image's size; {summary['metrics']['units']})")
    pc = m["paper_compatible"]
    print(f"paper-compatible (as the LEAF paper's Table 1: {'x'.join(map(str, pc['resolution']))} processing "
          f"resolution, both-empty = 0): Dice {pc['dice']:.4f}, mIoU {pc['miou_batch_mean']:.4f}")
    if "seed_stability" in summary:
        st = summary["seed_stability"]
        print(f"seed stability over {args.seeds} seeds: per-image Dice std mean {st['dice_std_mean']:.4f}, "
              f"pixel disagreement mean {st['disagreement_mean']:.4%}")
    print(f"results in {result['output']} (per_image.csv, summary.json, grid.png, worst_cases.png, overlays/)")
    return 0


def cmd_split(args) -> int:
    from .datasets import find_dataset, make_dataset_split, split_digest

    pairs = find_dataset(args.data, args.layout, args.images, args.masks)
    out = Path(args.output)
    if out.exists() and not args.force:
        split = D.read_split(out, [p.stem for p in pairs])
        print(f"{out} exists (pass --force to replace it); it holds:")
    else:
        split = make_dataset_split(pairs, args.train, args.val, args.test, args.seed, args.layout)
        D.write_json_atomic(split, out)
        print(f"wrote {out}:")
    for name in D.SPLITS:
        stems = split[name]
        print(f"  {name:5s} {len(stems):6d}  {', '.join(stems[:5])}{' ...' if len(stems) > 5 else ''}")
    unused = len(pairs) - sum(len(split[k]) for k in D.SPLITS)
    print(f"  rule: {split.get('rule', 'n/a')}; seed {split.get('seed')}; {len(pairs)} pairs in {args.data}"
          f"{f' ({unused} not in any split)' if unused else ''}; sha256 {split_digest(out)[:16]}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.output, minutes=args.minutes)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leafseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train LEAF from a YAML config (see configs/default.yaml)")
    p.add_argument("--config", default=None, help="YAML file or packaged config name (cpu-small, ...)")
    p.add_argument("--output", default=None, help="run folder (overrides run.output_dir)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.max_steps=500")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment an image or a folder of images")
    p.add_argument("--model", required=True, help="saved pipeline folder (e.g. RUN/model-best)")
    p.add_argument("--input", required=True, help="image file or folder")
    p.add_argument("--output", required=True, help="folder for masks and overlays")
    p.add_argument("--uncertainty", action="store_true", help="with --ensemble > 1: write uncertainty maps")
    _add_inference_args(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="metrics on a split: per_image.csv, summary.json, figures")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="dataset folder (in the run's layout)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--split-file", default=None, help="default: split.json of the model's run folder")
    p.add_argument("--output", default=None, help="default: MODEL/eval-SPLIT")
    p.add_argument("--layout", default=None, choices=sorted(LAYOUTS),
                   help="dataset layout (default: the training run's data.layout, else folder)")
    p.add_argument("--seeds", type=int, default=1, help="also run N-1 more seeds and report seed stability")
    p.add_argument("--worst", type=int, default=8, help="how many worst cases to list and draw (default 8)")
    p.add_argument("--spacing", type=float, nargs=2, metavar=("SY", "SX"), default=None,
                   help="pixel spacing (e.g. mm) for HD95/ASSD; default: pixels")
    _add_inference_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("split", help="write (or show) a deterministic train/val/test split file for a dataset")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--layout", default="folder", choices=sorted(LAYOUTS))
    p.add_argument("--output", required=True, help="split JSON file to write")
    p.add_argument("--train", type=float, default=None, help="fraction (default: the layout's)")
    p.add_argument("--val", type=float, default=None)
    p.add_argument("--test", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", default="images", help="layout=folder: image sub-folder")
    p.add_argument("--masks", default="masks", help="layout=folder: mask sub-folder")
    p.add_argument("--force", action="store_true", help="replace an existing split file")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("demo", help="synthetic data -> fit autoencoder -> train LEAF -> evaluate (CPU, minutes)")
    p.add_argument("--output", default="leafseg-demo", help="demo folder (default ./leafseg-demo)")
    p.add_argument("--minutes", type=float, default=None, help="rough time budget for LEAF training")
    p.set_defaults(func=cmd_demo)

    from .convert import add_convert_ldm_parser
    add_convert_ldm_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"leafseg {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

