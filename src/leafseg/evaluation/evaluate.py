"""``leafseg evaluate``: a saved model on one split of a dataset, metrics at each image's size, figures, hashes."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import __version__
from .. import data as D
from ..files import folder_digest, prepare_output, write_csv, write_json
from ..metrics import PaperMetrics, SegmentationMetrics, dice
from ..models.weights import read_config
from ..pipelines import load_pipeline
from .figures import panel_row, read_own_png, save_png, stack_rows


def _run_config(model: Path) -> dict | None:
    path = model.parent / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _chosen_pairs(model: Path, data_root: str, split: str, split_file: str | None, layout: str,
                  images_dir: str, masks_dir: str) -> tuple[list, Path]:
    """The pairs of one split (``all``: every pair) and the split file they come from."""
    pairs = D.find_dataset(data_root, layout, images_dir, masks_dir)
    split_path = Path(split_file) if split_file else model.parent / "split.json"
    if split == "all":
        return pairs, split_path
    if not split_path.is_file():
        raise FileNotFoundError(f"{split_path}: split file not found (pass --split-file, or --split all)")
    chosen = D.select(pairs, D.read_split(split_path, [p.stem for p in pairs])[split])
    if not chosen:
        raise ValueError(f"{split_path}: the {split!r} split is empty")
    return chosen, split_path


def model_digest(model: Path) -> str:
    """sha256 of a saved model's own files (model_index.json and the component folders it names): evaluation
    outputs written inside the model folder do not change it."""
    components = {k for k in read_config(model, "model_index.json") if not k.startswith("_")}
    return folder_digest(model, exclude=lambda rel: not (rel.parts[0] in components or str(rel) == "model_index.json"))


def _seed_stability(stem: str, gt: np.ndarray, runs: list, j: int) -> dict:
    seed_masks = np.stack([r.masks[j] for r in runs])
    seed_dice = [dice(m, gt) for m in seed_masks]
    return {"name": stem, "dice_std": float(np.std(seed_dice)), "dice_min": float(np.min(seed_dice)),
            "dice_max": float(np.max(seed_dice)),
            "disagreement": float(np.mean(seed_masks.any(0) & ~seed_masks.all(0)))}


def _stability_summary(stability: list[dict], seeds: list[int]) -> dict:
    stds = np.array([r["dice_std"] for r in stability])
    dis = np.array([r["disagreement"] for r in stability])
    return {
        "seeds": seeds, "dice_std_mean": float(stds.mean()), "dice_std_max": float(stds.max()),
        "disagreement_mean": float(dis.mean()), "disagreement_max": float(dis.max()),
        "definition": "dice_std: per-image std (ddof 0) of the Dice of each seed's mask; disagreement: per-image "
                      "fraction of pixels on which the seeds' masks are not unanimous",
    }


def _write_figures(out: Path, rows: list[dict], first_panels: list[np.ndarray], worst_k: int) -> list[dict]:
    """grid.png (the first images' panels) and worst_cases.png (the ``worst_k`` lowest Dice); returns the worst rows."""
    save_png(stack_rows(first_panels), out / "grid.png")
    worst = sorted(rows, key=lambda r: r["dice"])[:worst_k]
    if worst:
        save_png(stack_rows([read_own_png(out / "overlays" / f"{r['name']}.png") for r in worst]),
                 out / "worst_cases.png")
    return worst


def evaluate(model_dir: str, data_root: str, split: str, split_file: str | None, output: str | None,
             steps: int = 1, ensemble: int = 1, seed: int = 0, batch_size: int = 8, device: str | None = None,
             layout: str | None = None, images_dir: str = "images", masks_dir: str = "masks", seeds: int = 1,
             worst_k: int = 8, spacing: tuple[float, float] | None = None, overwrite: bool = False) -> dict:
    """Metrics on one split at each image's original size, into ``output`` (default MODEL/eval-SPLIT), which must
    be empty or absent (``overwrite``: emptied first).

    Writes ``per_image.csv``, ``summary.json`` (metrics, config, split-file and checkpoint hashes, seeds),
    ``overlays/<stem>.png`` (image | ground truth | prediction | uncertainty), ``grid.png`` (the first images),
    ``worst_cases.png`` + the summary's ``worst_cases`` (the ``worst_k`` lowest Dice). With ``seeds > 1`` the
    pipeline also runs with seeds ``seed + 1000 k`` (k = 1 .. seeds-1); the reported metrics stay those of ``seed``
    and the summary gains ``seed_stability`` (per-image Dice std across seeds, pixel disagreement rate).
    """
    from tqdm.auto import tqdm

    if seeds < 1 or worst_k < 0:
        raise ValueError("seeds must be >= 1 and worst_k >= 0")
    model = Path(model_dir)
    run_config = _run_config(model)
    if layout is None:
        layout = ((run_config or {}).get("data") or {}).get("layout", "folder")
    chosen, split_path = _chosen_pairs(model, data_root, split, split_file, layout, images_dir, masks_dir)
    pipe = load_pipeline(model_dir, device)
    metrics, paper = SegmentationMetrics(spacing=spacing), PaperMetrics()
    out = prepare_output(Path(output) if output else model / f"eval-{split}", overwrite)
    (out / "overlays").mkdir()
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
                stability.append(_seed_stability(pair.stem, gt, runs, j))
                if unc is None:
                    unc = np.stack([r.probabilities[j] for r in runs]).std(0)
            row = panel_row(image, gt, pred, unc)
            save_png(row, out / "overlays" / f"{pair.stem}.png")
            if len(panels) < 8:
                panels[pair.stem] = row
    rows = metrics.rows()
    write_csv(rows, out / "per_image.csv")
    worst = _write_figures(out, rows, list(panels.values()), worst_k)
    summary = {
        "model": str(model.resolve()), "checkpoint_sha256": model_digest(model),
        "data": str(Path(data_root).resolve()), "layout": layout, "split": split,
        "split_file": None if split == "all" else str(split_path.resolve()),
        "split_file_sha256": None if split == "all" else D.split_digest(split_path),
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
        summary["seed_stability"] = _stability_summary(stability, [seed + 1000 * k for k in range(seeds)])
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
