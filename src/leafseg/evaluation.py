"""Evaluation and drawing helpers shared by ``leafseg predict``, ``leafseg evaluate`` and the demo."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from . import data as D


def load_pipeline(model_dir: str, device: str | None):
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


def save_png(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(array).save(tmp)
    tmp.replace(path)


def input_files(source: str) -> list[Path]:
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
    pipe = load_pipeline(model_dir, device)
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
            save_png(np.concatenate([overlay(image, gt, (0, 200, 0)), overlay(image, pred)], axis=1),
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
