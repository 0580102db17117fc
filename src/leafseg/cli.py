"""``leafseg`` command line: train, predict, evaluate, demo, convert-ldm.

``leafseg train`` runs the same on one CPU, one GPU or several processes:
``accelerate launch --num_processes 2 -m leafseg.cli train --config FILE``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from . import data as D


def _add_inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=1, help="reverse steps (1 = LEAF single step; >1 = DDIM)")
    p.add_argument("--ensemble", type=int, default=1, help="seeds averaged into a probability map (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _load_pipeline(model_dir: str, device: str | None):
    import torch

    from .pipeline import LeafSegPipeline

    folder = Path(model_dir)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder / 'model_index.json'}: not a saved leafseg pipeline folder")
    pipe = LeafSegPipeline.from_pretrained(folder, local_files_only=True)
    pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def overlay(image: np.ndarray, mask: np.ndarray, color=(255, 64, 0), alpha: float = 0.45) -> np.ndarray:
    """Image with the mask tinted and its outline drawn, (H, W, 3) uint8."""
    out = image.astype(np.float32).copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, np.float32)
    edge = mask & ~_erode(mask)
    out[edge] = color
    return out.clip(0, 255).astype(np.uint8)


def _erode(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion
    return binary_erosion(mask, iterations=1, border_value=0)


def _save_png(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(array).save(tmp)
    tmp.replace(path)


def _input_files(source: str) -> list[Path]:
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in sorted(path.iterdir(), key=lambda p: D.sort_key(p.stem))
                 if p.suffix.lower() in D.IMAGE_EXTENSIONS and not p.name.startswith(".")]
        if not files:
            raise ValueError(f"{path}: no images ({', '.join(D.IMAGE_EXTENSIONS)})")
        return files
    raise FileNotFoundError(f"{path}: no such file or folder")


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

    pipe = _load_pipeline(args.model, args.device)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    files = _input_files(args.input)
    for i in tqdm(range(0, len(files), args.batch_size), desc="predicting", disable=len(files) < 2):
        chunk = files[i:i + args.batch_size]
        images = [D.load_image(f) for f in chunk]
        result = pipe(images, num_inference_steps=args.steps, ensemble_size=args.ensemble, seed=args.seed)
        for k, (f, image, mask) in enumerate(zip(chunk, images, result.masks)):
            _save_png(mask.astype(np.uint8) * 255, out / f"{f.stem}_mask.png")
            _save_png(overlay(image, mask), out / f"{f.stem}_overlay.png")
            if result.uncertainty is not None and args.uncertainty:
                std = result.uncertainty[k]  # std of values in [0, 1]: at most 0.5
                _save_png((np.clip(std / 0.5, 0, 1) * 255).astype(np.uint8), out / f"{f.stem}_uncertainty.png")
    print(f"wrote {len(files)} mask(s) and overlay(s) to {out}")
    return 0


def evaluate(model_dir: str, data_root: str, split: str, split_file: str | None, output: str | None,
             steps: int = 1, ensemble: int = 1, seed: int = 0, batch_size: int = 8, device: str | None = None,
             images_dir: str = "images", masks_dir: str = "masks") -> dict:
    """Per-image metrics on one split at each image's original size; writes per_image.csv and summary.json."""
    from tqdm.auto import tqdm

    from .metrics import SegmentationMetrics, write_csv, write_json

    model = Path(model_dir)
    pairs = D.find_pairs(data_root, images_dir, masks_dir)
    split_path = Path(split_file) if split_file else model.parent / "split.json"
    if split == "all":
        chosen = pairs
    else:
        if not split_path.is_file():
            raise FileNotFoundError(f"{split_path}: split file not found (pass --split-file, or --split all)")
        chosen = D.select(pairs, D.read_split(split_path, [p.stem for p in pairs])[split])
    pipe = _load_pipeline(model_dir, device)
    metrics = SegmentationMetrics()
    out = Path(output) if output else model / f"eval-{split}"
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    started = time.time()
    for i in tqdm(range(0, len(chosen), batch_size), desc=f"evaluating {split}"):
        chunk = chosen[i:i + batch_size]
        images = [D.load_image(p.image) for p in chunk]
        result = pipe(images, num_inference_steps=steps, ensemble_size=ensemble, seed=seed)
        for pair, image, pred in zip(chunk, images, result.masks):
            gt = D.load_mask(pair.mask)
            metrics.update(pred, gt, name=pair.stem)
            _save_png(np.concatenate([overlay(image, gt, (0, 200, 0)), overlay(image, pred)], axis=1),
                      out / "overlays" / f"{pair.stem}.png")
    rows = metrics.rows()
    write_csv(rows, out / "per_image.csv")
    summary = {
        "model": str(model.resolve()), "data": str(Path(data_root).resolve()), "split": split,
        "split_file": None if split == "all" else str(split_path.resolve()), "n_images": len(rows),
        "inference": {"steps": steps, "ensemble": ensemble, "seed": seed}, "wall_s": round(time.time() - started, 1),
        "metrics": metrics.summary(),
    }
    write_json(summary, out / "summary.json")
    return {"summary": summary, "output": out}


def cmd_evaluate(args) -> int:
    result = evaluate(args.model, args.data, args.split, args.split_file, args.output, args.steps, args.ensemble,
                      args.seed, args.batch_size, args.device)
    m = result["summary"]["metrics"]
    print(f"{result['summary']['n_images']} images: Dice {m['dice']['mean']:.4f}, IoU {m['iou']['mean']:.4f} "
          f"(per-image foreground means); results in {result['output']}")
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

    p = sub.add_parser("evaluate", help="per-image Dice/IoU on a split: per_image.csv + summary.json")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="data folder with images/ and masks/")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--split-file", default=None, help="default: split.json of the model's run folder")
    p.add_argument("--output", default=None, help="default: MODEL/eval-SPLIT")
    _add_inference_args(p)
    p.set_defaults(func=cmd_evaluate)

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

