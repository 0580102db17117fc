"""Figures of an evaluation and of predictions: mask overlays, uncertainty heat maps with a colour bar, titled
panels and grids with column headers (PIL only, so that thousands of overlays stay fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .files import atomic_write
from .metrics import dice, mean_class_dice


def overlay(image: np.ndarray, mask: np.ndarray, color=(255, 64, 0), alpha: float = 0.45) -> np.ndarray:
    """Image with the mask tinted and its outline drawn, (H, W, 3) uint8."""
    out = image.astype(np.float32).copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, np.float32)
    edge = mask & ~_erode(mask)
    out[edge] = color
    return out.clip(0, 255).astype(np.uint8)


#: one colour per structure of a label map (class 1, 2, ...), distinct on grey X-rays and on colour frames
CLASS_COLOURS = ((255, 64, 0), (0, 160, 255), (255, 215, 0), (200, 0, 255), (0, 220, 120), (255, 0, 120),
                 (140, 90, 40))


def overlay_labels(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Image with each structure of a label map (class indices 1..K) tinted and outlined in its colour."""
    out = image
    for k in range(1, int(labels.max()) + 1 if labels.size else 1):
        out = overlay(out, labels == k, CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)], alpha)
    return out


def legend(width: int, names: dict[int, str], size: int = 14) -> np.ndarray:
    """A strip naming each structure beside a swatch of its colour, (h, width, 3) uint8."""
    from PIL import ImageDraw

    strip = Image.new("RGB", (width, size + 10), (255, 255, 255))
    draw, font, x = ImageDraw.Draw(strip), _font(size), 6
    for k, name in sorted(names.items()):
        colour = CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)]
        draw.rectangle([x, 5, x + size, 5 + size], fill=colour)
        draw.text((x + size + 4, 4), name, fill=(0, 0, 0), font=font)
        x += size + 16 + int(draw.textlength(name, font=font))
    return np.asarray(strip)


def _erode(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion
    return binary_erosion(mask, iterations=1, border_value=0)


def save_png(array: np.ndarray, path: Path, compress_level: int = 6) -> None:
    """PNG, atomically. ``compress_level`` 1 writes large figures several times faster for slightly larger files
    (the pixels are the same: PNG is lossless)."""
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG", compress_level=compress_level))


#: the longest side of an overlay's panels by default: large frames (e.g. 1920x1080) are drawn smaller, the numbers
#: are computed at full size either way
OVERLAY_SIZE = 512


def fit_panels(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, uncertainty: np.ndarray | None,
               max_side: int | None = OVERLAY_SIZE) -> tuple:
    """``image, gt, pred, uncertainty`` at most ``max_side`` pixels on their longer side (None or 0: unchanged):
    image and uncertainty bilinear, masks nearest, so that an overlay of a large frame is quick to draw and write."""
    height, width = gt.shape
    if not max_side or max(height, width) <= max_side:
        return image, gt, pred, uncertainty
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))

    def resized(array: np.ndarray, resample) -> np.ndarray:
        return np.asarray(Image.fromarray(array).resize(size, resample))

    masks = [resized(m.astype(np.uint8), Image.NEAREST) for m in (gt, pred)]
    masks = [m.astype(bool) if src.dtype == bool else m for m, src in zip(masks, (gt, pred))]
    small_uncertainty = None if uncertainty is None else resized(uncertainty.astype(np.float32), Image.BILINEAR)
    return resized(image, Image.BILINEAR), *masks, small_uncertainty


def heatmap(values: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) floats in [0, vmax] -> (H, W, 3) uint8 with the 'magma' colour map."""
    from matplotlib import colormaps

    return (colormaps["magma"](np.clip(values / vmax, 0, 1))[..., :3] * 255).astype(np.uint8)


COLUMNS = ("image", "ground truth", "prediction", "uncertainty (std over seeds)")
_BAR = 28  # width of the uncertainty colour bar strip in a figure
FIGURE_PANEL = 192  # width of one panel in grid.png and the other figures


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _label(width: int, text: str, height: int = 22, size: int = 14) -> np.ndarray:
    """A white strip with ``text`` on it, (height, width, 3) uint8."""
    from PIL import ImageDraw

    strip = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(strip).text((4, (height - size) // 2 - 1), text, fill="black", font=_font(size))
    return np.asarray(strip)


def colour_bar(height: int, vmax: float = 0.5, width: int = _BAR) -> np.ndarray:
    """A vertical 'magma' scale from vmax (top) to 0 (bottom) with its end values, (height, width, 3) uint8; ramp
    and labels grow with ``width`` (a wide image's bar stays legible once its row is shrunk into a figure)."""
    from PIL import ImageDraw

    scale = width / _BAR
    ramp = heatmap(np.linspace(vmax, 0, height)[:, None].repeat(round(8 * scale), axis=1), vmax)
    bar = Image.new("RGB", (width, height), "white")
    bar.paste(Image.fromarray(ramp), (0, 0))
    size = round(10 * scale)
    draw, font = ImageDraw.Draw(bar), _font(size)
    draw.text((round(10 * scale), 0), f"{vmax:g}", fill="black", font=font)
    draw.text((round(10 * scale), height - round(1.2 * size)), "0", fill="black", font=font)
    return np.asarray(bar)


def panel_row(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, uncertainty: np.ndarray | None,
              title: str | None = None, names: dict[int, str] | None = None) -> np.ndarray:
    """image | ground truth | prediction [| uncertainty with its colour bar (std of values in [0, 1]: 0..0.5)],
    under a strip with ``title`` (e.g. the case and its Dice). No uncertainty column without an ensemble. With
    ``names`` ({class index: name}) ``gt`` and ``pred`` are label maps, drawn a colour per structure over a
    legend."""
    if names is not None:
        panels = [image, overlay_labels(image, gt), overlay_labels(image, pred)]
    else:
        panels = [image, overlay(image, gt, (0, 200, 0)), overlay(image, pred)]
    if uncertainty is not None:  # the bar keeps its share of a figure's 192-px panels whatever the image's size
        bar_width = max(_BAR, round(_BAR * image.shape[1] / FIGURE_PANEL))
        panels += [heatmap(uncertainty, 0.5), colour_bar(image.shape[0], width=bar_width)]
    row = np.concatenate(panels, axis=1)
    size = max(12, row.shape[1] // 55)  # readable once a grid shrinks the row to its width
    if names is not None:
        row = np.concatenate([row, legend(row.shape[1], names, size)], axis=0)
    if title is None:
        return row
    return np.concatenate([_label(row.shape[1], title, height=size + 8, size=size), row], axis=0)



def save_overlay(path: Path, name: str, image: np.ndarray, gt: np.ndarray, pred: np.ndarray,
                 uncertainty: np.ndarray | None, max_side: int | None = OVERLAY_SIZE,
                 names: dict[int, str] | None = None) -> None:
    """One case's overlay row (:func:`panel_row`) titled with its Dice (label maps: the mean over the structures
    present, with ``names`` {class index: name}), or for a frame without an object the share of it given a mask;
    drawn at most ``max_side`` pixels a side (:func:`fit_panels`; the title's numbers are the full-size ones) and
    written with fast PNG compression."""
    if names is not None:
        title = (f"{name}   mean Dice {mean_class_dice(pred, gt, max(names)):.3f}" if gt.any() else
                 f"{name}   no structure; predicted {(pred > 0).mean():.1%} of the frame")
    else:
        title = (f"{name}   Dice {dice(pred, gt):.3f}" if gt.any() else
                 f"{name}   no object; predicted {pred.mean():.1%} of the frame")
    save_png(panel_row(*fit_panels(image, gt, pred, uncertainty, max_side), title, names), path, compress_level=1)

def figure(rows: list[np.ndarray], with_uncertainty: bool, panel_width: int = FIGURE_PANEL) -> np.ndarray:
    """Rows of panels (from :func:`panel_row`) resized to a common panel width, under a header naming the columns."""
    n = 4 if with_uncertainty else 3
    width = n * panel_width + (_BAR if with_uncertainty else 0)
    header = np.concatenate([_label(panel_width, c) for c in COLUMNS[:n]]
                            + ([_label(_BAR, "")] if with_uncertainty else []), axis=1)
    return np.concatenate([header, stack_rows(rows, width)], axis=0)


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
