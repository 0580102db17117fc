"""Evaluation and drawing helpers shared by ``leafseg predict``, ``leafseg evaluate`` and the demo."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
from PIL import Image

from . import __version__
from . import data as D


def load_pipeline(model_dir: str, device: str | None):
    """A saved LEAF pipeline or supervised-UNet baseline folder (by model_index.json's class), offline."""
    import json

    import torch

    from .baseline import SupervisedSegPipeline
    from .pipeline import LeafSegPipeline

    folder = Path(model_dir)
    index = folder / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{index}: not a saved leafseg pipeline folder")
    classes = {c.__name__: c for c in (LeafSegPipeline, SupervisedSegPipeline)}
    name = json.loads(index.read_text()).get("_class_name")
    if name not in classes:
        raise ValueError(f"{index}: pipeline class {name!r} is not one of {sorted(classes)}")
    pipe = classes[name].from_pretrained(folder, local_files_only=True)
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


def heatmap(values: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) floats in [0, vmax] -> (H, W, 3) uint8 with the 'magma' colour map."""
    from matplotlib import colormaps

    return (colormaps["magma"](np.clip(values / vmax, 0, 1))[..., :3] * 255).astype(np.uint8)


def panel_row(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, uncertainty: np.ndarray | None) -> np.ndarray:
    """image | ground truth | prediction | uncertainty (std over seeds/ensemble, 0..0.5; black when none)."""
    unc = np.zeros_like(image) if uncertainty is None else heatmap(uncertainty, 0.5)
    return np.concatenate([image, overlay(image, gt, (0, 200, 0)), overlay(image, pred), unc], axis=1)


def stack_rows(rows: list[np.ndarray], width: int = 4 * 192) -> np.ndarray:
    """Rows of panels resized to a common width and stacked vertically (a figure for many images)."""
    out = []
    for row in rows:
        h = max(1, round(row.shape[0] * width / row.shape[1]))
        out.append(np.asarray(Image.fromarray(row).resize((width, h), Image.BILINEAR)))
    return np.concatenate(out, axis=0)


def files_digest(folder: Path) -> str:
    """sha256 over the weight files of a saved model folder (names and bytes): identifies the checkpoint."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json"):
            h.update(str(f.relative_to(folder)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _run_config(model: Path) -> dict | None:
    path = model.parent / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def evaluate(model_dir: str, data_root: str, split: str, split_file: str | None, output: str | None,
             steps: int = 1, ensemble: int = 1, seed: int = 0, batch_size: int = 8, device: str | None = None,
             layout: str | None = None, images_dir: str = "images", masks_dir: str = "masks", seeds: int = 1,
             worst_k: int = 8, spacing: tuple[float, float] | None = None) -> dict:
    """Metrics on one split at each image's original size.

    Writes ``per_image.csv``, ``summary.json`` (metrics, config, split-file and checkpoint hashes, seeds),
    ``overlays/<stem>.png`` (image | ground truth | prediction | uncertainty), ``grid.png`` (the first images),
    ``worst_cases.png`` + the summary's ``worst_cases`` (the ``worst_k`` lowest Dice). With ``seeds > 1`` the
    pipeline also runs with seeds ``seed + 1000 k`` (k = 1 .. seeds-1); the reported metrics stay those of ``seed``
    and the summary gains ``seed_stability`` (per-image Dice std across seeds, pixel disagreement rate).
    """
    from tqdm.auto import tqdm

    from .datasets import find_dataset, split_digest
    from .metrics import PaperMetrics, SegmentationMetrics, dice, write_csv, write_json

    if seeds < 1 or worst_k < 0:
        raise ValueError("seeds must be >= 1 and worst_k >= 0")
    model = Path(model_dir)
    run_config = _run_config(model)
    if layout is None:
        layout = ((run_config or {}).get("data") or {}).get("layout", "folder")
    pairs = find_dataset(data_root, layout, images_dir, masks_dir)
    split_path = Path(split_file) if split_file else model.parent / "split.json"
    if split == "all":
        chosen = pairs
    else:
        if not split_path.is_file():
            raise FileNotFoundError(f"{split_path}: split file not found (pass --split-file, or --split all)")
        chosen = D.select(pairs, D.read_split(split_path, [p.stem for p in pairs])[split])
    if not chosen:
        raise ValueError(f"{split_path}: the {split!r} split is empty")
    pipe = load_pipeline(model_dir, device)
    metrics = SegmentationMetrics(spacing=spacing)
    paper = PaperMetrics()
    out = Path(output) if output else model / f"eval-{split}"
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    started = time.time()
    stability, panels = [], {}
    for i in tqdm(range(0, len(chosen), batch_size), desc=f"evaluating {split}"):
        chunk = chosen[i:i + batch_size]
        images = [D.load_image(p.image) for p in chunk]
        runs = [pipe(images, num_inference_steps=steps, ensemble_size=ensemble, seed=seed + 1000 * k)
                for k in range(seeds)]  # seed + 1000 k: ensemble members (seed .. seed+E-1) never overlap
        result = runs[0]
        for j, (pair, image, pred) in enumerate(zip(chunk, images, result.masks)):
            gt = D.load_mask(pair.mask, pair.mask_rule)
            if gt.shape != pred.shape:
                raise ValueError(f"{pair.mask}: mask is {gt.shape[1]}x{gt.shape[0]} but its image {pair.image} is "
                                 f"{pred.shape[1]}x{pred.shape[0]}")
            metrics.update(pred, gt, name=pair.stem)
            paper.update(result.processing_masks[j], D.resize_mask(gt, pipe.resolution))
            unc = result.uncertainty[j] if result.uncertainty is not None else None
            if seeds > 1:
                seed_masks = np.stack([r.masks[j] for r in runs])
                seed_dice = [dice(m, gt) for m in seed_masks]
                stability.append({"name": pair.stem, "dice_std": float(np.std(seed_dice)),
                                  "dice_min": float(np.min(seed_dice)), "dice_max": float(np.max(seed_dice)),
                                  "disagreement": float(np.mean(seed_masks.any(0) & ~seed_masks.all(0)))})
                if unc is None:
                    unc = np.stack([r.probabilities[j] for r in runs]).std(0)
            row = panel_row(image, gt, pred, unc)
            save_png(row, out / "overlays" / f"{pair.stem}.png")
            if len(panels) < 8:
                panels[pair.stem] = row
    rows = metrics.rows()
    write_csv(rows, out / "per_image.csv")
    save_png(stack_rows(list(panels.values())), out / "grid.png")
    worst = sorted(rows, key=lambda r: r["dice"])[:worst_k]
    if worst:
        save_png(stack_rows([np.asarray(Image.open(out / "overlays" / f"{r['name']}.png")) for r in worst]),
                 out / "worst_cases.png")
    summary = {
        "model": str(model.resolve()), "checkpoint_sha256": files_digest(model),
        "data": str(Path(data_root).resolve()), "layout": layout, "split": split,
        "split_file": None if split == "all" else str(split_path.resolve()),
        "split_file_sha256": None if split == "all" else split_digest(split_path),
        "n_images": len(rows),
        "inference": {"steps": steps, "ensemble": ensemble, "seed": seed, "seeds": seeds,
                      "pipeline": type(pipe).__name__, "device": str(pipe.device)},
        "versions": _versions(), "leafseg": __version__,
        "wall_s": round(time.time() - started, 1),
        "metrics": {**metrics.summary(), "paper_compatible": paper.result()},
        "worst_cases": [{"name": r["name"], "dice": r["dice"], "iou": r["iou"]} for r in worst],
        "config": run_config,
        "figures": {"overlays": "overlays/<stem>.png: image | ground truth | prediction | uncertainty",
                    "grid": "grid.png", "worst_cases": "worst_cases.png" if worst else None},
    }
    if seeds > 1:
        stds = np.array([r["dice_std"] for r in stability])
        dis = np.array([r["disagreement"] for r in stability])
        summary["seed_stability"] = {
            "seeds": [seed + 1000 * k for k in range(seeds)],
            "dice_std_mean": float(stds.mean()), "dice_std_max": float(stds.max()),
            "disagreement_mean": float(dis.mean()), "disagreement_max": float(dis.max()),
            "definition": "dice_std: per-image std (ddof 0) of the Dice of each seed's mask; disagreement: per-image "
                          "fraction of pixels on which the seeds' masks are not unanimous",
        }
        write_csv(stability, out / "seed_stability.csv")
    write_json(summary, out / "summary.json")
    return {"summary": summary, "output": out}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "diffusers", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
