"""``leafseg evaluate``: a saved model on one split of a dataset, metrics at each image's size, figures, hashes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from .. import data as D
from ..files import folder_digest, prepare_output, write_csv, write_json, write_text
from ..metrics import PaperMetrics, SegmentationMetrics, dice
from ..models.weights import read_config
from ..pipelines import load_pipeline
from .figures import figure, panel_row, read_own_png, save_png
from .report import report_markdown


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


@dataclass
class _Sample:
    name: str
    image: np.ndarray           # (H, W, 3) uint8
    gt: np.ndarray              # (H, W) bool
    volume: str | None = None   # the volume a slice belongs to
    spacing: tuple[float, float] | None = None


def _samples(pairs: list, intensity: dict | None, axis: int, volumes: dict):
    """2D pairs as one sample each; a volume pair as its slices along ``axis`` (recorded in ``volumes`` so that
    the predictions can be stacked back), scaled to 8 bit as the model was trained."""
    for pair in pairs:
        if not D.is_volume(pair.image):
            image, gt = D.load_image(pair.image), D.load_mask(pair.mask, pair.mask_rule)
            if gt.shape != image.shape[:2]:
                raise ValueError(f"{pair.mask}: mask is {gt.shape[1]}x{gt.shape[0]} but its image {pair.image} is "
                                 f"{image.shape[1]}x{image.shape[0]}")
            yield _Sample(pair.stem, image, gt), True
            continue
        images, masks, mask_volume = D.volume_pair_slices(pair, intensity, axis)
        volumes[pair.stem] = {"gt": masks, "pred": [], "axis": axis, "spacing": mask_volume.spacing}
        last = len(images) - 1
        for k, (image, gt) in enumerate(zip(images, masks)):
            yield _Sample(f"{pair.stem}/{k}", image, gt, pair.stem, mask_volume.slice_spacing(axis)), k == last


def _batches(samples, batch_size: int, bar):
    """Batches of samples; the progress bar counts finished cases (images or volumes)."""
    chunk = []
    for sample, case_done in samples:
        chunk.append(sample)
        bar.update(int(case_done))
        if len(chunk) == batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _volume_metrics(volumes: dict) -> SegmentationMetrics | None:
    """3D metrics of each volume (its slices stacked back), distances in the voxel spacing of its header (mm)."""
    if not volumes:
        return None
    acc = SegmentationMetrics()
    for stem, v in volumes.items():
        acc.add(np.stack(v["pred"], axis=v["axis"]), np.stack(v["gt"], axis=v["axis"]), stem, v["spacing"])
    return acc


def model_digest(model: Path) -> str:
    """sha256 of a saved model's own files (model_index.json and the component folders it names): evaluation
    outputs written inside the model folder do not change it."""
    if (model / "leafseg_onnx.json").is_file():  # an ONNX export: its graphs and manifest
        return folder_digest(model, suffixes=(".onnx", ".json"))
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


def _write_figures(out: Path, rows: list[dict], first_panels: list[np.ndarray], worst_k: int,
                   with_uncertainty: bool) -> list[dict]:
    """grid.png (the first images' panels) and worst_cases.png (the ``worst_k`` lowest Dice); returns the worst rows."""
    save_png(figure(first_panels, with_uncertainty), out / "grid.png")
    worst = sorted(rows, key=lambda r: r["dice"])[:worst_k]
    if worst:
        save_png(figure([read_own_png(out / "overlays" / f"{r['name'].replace('/', '_')}.png") for r in worst
                         if (out / "overlays" / f"{r['name'].replace('/', '_')}.png").exists()], with_uncertainty),
                 out / "worst_cases.png")
    return worst


def _predict_and_score(pipe, chosen: list, out: Path, metrics: SegmentationMetrics, paper: PaperMetrics, split: str,
                       steps: int, ensemble: int, seed: int, seeds: int, batch_size: int, spacing) -> tuple:
    """Segment every sample of ``chosen`` (2D images, volumes' slices), score it, write its overlay; returns the
    seed-stability rows, the first panels (for grid.png) and the volumes' slices (for 3D metrics)."""
    from tqdm.auto import tqdm

    stability, panels, volumes = [], {}, {}
    samples = _samples(chosen, pipe.config.get("intensity"), int(pipe.config.get("slice_axis", 2)), volumes)
    bar = tqdm(total=len(chosen), desc=f"evaluating {split}", unit="case")
    for chunk in _batches(samples, batch_size, bar):
        images = [c.image for c in chunk]
        runs = [pipe(images, num_inference_steps=steps, ensemble_size=ensemble, seed=seed + 1000 * k)
                for k in range(seeds)]  # seed + 1000 k: ensemble members (seed .. seed+E-1) never overlap
        result = runs[0]
        for j, (c, pred) in enumerate(zip(chunk, result.masks)):
            metrics.update(pred, c.gt, name=c.name, spacing=c.spacing or spacing)
            paper.update(result.processing_masks[j], D.resize_mask(c.gt, pipe.resolution))
            if c.volume is not None:
                volumes[c.volume]["pred"].append(pred)
            unc = result.uncertainty[j] if result.uncertainty is not None else None
            if seeds > 1:
                stability.append(_seed_stability(c.name, c.gt, runs, j))
                if unc is None:
                    unc = np.stack([r.probabilities[j] for r in runs]).std(0)
            if c.volume is not None and not (pred.any() or c.gt.any()):
                continue  # a volume's empty slices get no figure
            row = panel_row(c.image, c.gt, pred, unc, f"{c.name}   Dice {dice(pred, c.gt):.3f}")
            save_png(row, out / "overlays" / f"{c.name.replace('/', '_')}.png")
            if len(panels) < 8:
                panels[c.name] = row
    bar.close()
    return stability, panels, volumes


def default_output(model_dir: str | Path, split: str) -> Path:
    """Where ``leafseg evaluate`` writes without ``--output``: ``eval-<model folder name>-SPLIT`` beside the model."""
    model = Path(model_dir).resolve()
    return model.parent / f"eval-{model.name}-{split}"


def evaluate(model_dir: str, data_root: str, split: str, split_file: str | None, output: str | None,
             steps: int = 1, ensemble: int = 1, seed: int = 0, batch_size: int = 8, device: str | None = None,
             layout: str | None = None, images_dir: str = "images", masks_dir: str = "masks", seeds: int = 1,
             worst_k: int = 8, spacing: tuple[float, float] | None = None, overwrite: bool = False,
             backend: str = "auto") -> dict:
    """Metrics on one split at each image's original size, into ``output``, which must be empty or absent
    (``overwrite``: emptied first). The default, ``eval-<model folder name>-SPLIT`` beside the model folder, is
    outside it: a run that goes on training replaces its model-best folder whole, and would take the results along.

    Writes ``per_image.csv``, ``summary.json`` (metrics, config, split-file and checkpoint hashes, seeds),
    ``overlays/<stem>.png`` (image | ground truth | prediction | uncertainty), ``grid.png`` (the first images),
    ``worst_cases.png`` + the summary's ``worst_cases`` (the ``worst_k`` lowest Dice). With ``seeds > 1`` the
    pipeline also runs with seeds ``seed + 1000 k`` (k = 1 .. seeds-1); the reported metrics stay those of ``seed``
    and the summary gains ``seed_stability`` (per-image Dice std across seeds, pixel disagreement rate).
    """
    if seeds < 1 or worst_k < 0:
        raise ValueError("seeds must be >= 1 and worst_k >= 0")
    model = Path(model_dir)
    run_config = _run_config(model)
    if layout is None:
        layout = ((run_config or {}).get("data") or {}).get("layout", "folder")
    chosen, split_path = _chosen_pairs(model, data_root, split, split_file, layout, images_dir, masks_dir)
    pipe = load_pipeline(model_dir, device, backend)
    metrics, paper = SegmentationMetrics(spacing=spacing), PaperMetrics()
    out = prepare_output(Path(output) if output else default_output(model, split), overwrite)
    (out / "overlays").mkdir()
    started = time.time()
    stability, panels, volumes = _predict_and_score(pipe, chosen, out, metrics, paper, split, steps, ensemble, seed,
                                                    seeds, batch_size, spacing)
    volume_rows = _volume_metrics(volumes)
    rows = metrics.rows()
    write_csv(rows, out / "per_image.csv")
    worst = _write_figures(out, rows, list(panels.values()), worst_k, ensemble > 1 or seeds > 1)
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
    if volume_rows is not None:
        summary["volumes"] = volume_rows.summary()
        write_csv(volume_rows.rows(), out / "per_volume.csv")
    if seeds > 1:
        summary["seed_stability"] = _stability_summary(stability, [seed + 1000 * k for k in range(seeds)])
        write_csv(stability, out / "seed_stability.csv")
    write_json(summary, out / "summary.json")
    write_text(report_markdown(summary), out / "report.md")
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
