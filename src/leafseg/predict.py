"""``leafseg predict``: segment an image file or a folder of images with a saved model, writing masks and overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import data as D
from .evaluation.figures import overlay, save_png


def input_files(source: str | Path) -> list[Path]:
    """One image file, or the images of a folder in natural stem order."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(D.list_images(path), key=lambda p: D.sort_key(p.stem))
        if not files:
            raise ValueError(f"{path}: no images ({', '.join(D.IMAGE_EXTENSIONS)})")
        return files
    raise FileNotFoundError(f"{path}: no such file or folder")


def predict(model: str | Path, source: str | Path, output: str | Path, steps: int = 1, ensemble: int = 1,
            seed: int = 0, batch_size: int = 8, device: str | None = None, uncertainty: bool = False) -> list[Path]:
    """Write ``<stem>_mask.png`` (0/255) and ``<stem>_overlay.png`` (and with ``uncertainty`` and an ensemble,
    ``<stem>_uncertainty.png``, the per-pixel std scaled from [0, 0.5] to [0, 255]) for every input image."""
    from tqdm.auto import tqdm

    from .pipelines import load_pipeline

    pipe = load_pipeline(model, device)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files = input_files(source)
    for i in tqdm(range(0, len(files), batch_size), desc="predicting", disable=len(files) < 2):
        chunk = files[i:i + batch_size]
        images = [D.load_image(f) for f in chunk]
        result = pipe(images, num_inference_steps=steps, ensemble_size=ensemble, seed=seed)
        for k, (f, image, mask) in enumerate(zip(chunk, images, result.masks)):
            save_png(mask.astype(np.uint8) * 255, out / f"{f.stem}_mask.png")
            save_png(overlay(image, mask), out / f"{f.stem}_overlay.png")
            if result.uncertainty is not None and uncertainty:
                std = result.uncertainty[k]  # std of values in [0, 1]: at most 0.5
                save_png((np.clip(std / 0.5, 0, 1) * 255).astype(np.uint8), out / f"{f.stem}_uncertainty.png")
    return files
