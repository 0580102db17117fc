"""Figures of an evaluation and of predictions: mask overlays, uncertainty heat maps, panels and grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..files import atomic_write


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
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


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


def read_own_png(path: Path) -> np.ndarray:
    """A figure this package wrote (so trusted): read without PIL's decompression-bomb limit, which large source
    images' panels can exceed."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:
            return np.asarray(image)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
