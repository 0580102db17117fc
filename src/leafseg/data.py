"""Data: a folder of images and masks, a deterministic split file, in-memory arrays and flip augmentation.

Layout: ``ROOT/images/<stem>.<ext>`` and ``ROOT/masks/<stem>.<ext>``, matched by file stem (PNG, JPG, TIF, BMP).
Images may be RGB, RGBA (alpha dropped), greyscale (replicated) or 16-bit (min-max scaled to 8 bit). Masks are
binarised: 8-bit masks at > 127; masks whose maximum is 1 (label maps) at > 0; 16-bit masks are scaled to 8 bit
first. Every read error names the file.

The split file is JSON ``{"train": [...], "val": [...], "test": [...], "seed": s, "fractions": {...}}`` built from
the *sorted* stems with a seeded shuffle, written once next to the run and reused, so a split never depends on
directory listing order (``leafseg.datasets.load_or_create_dataset_split`` applies each layout's rule).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Pair:
    stem: str
    image: Path
    mask: Path | None
    mask_rule: str = "binary"   # how the mask file becomes a foreground mask (see ``load_mask``)
    subset: str | None = None   # the dataset's own train/val/test folder, where it has one


def _list_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or path.name.startswith("."):
            continue
        if path.stem in found:
            raise ValueError(f"{path}: two files share the stem {path.stem!r} (the other is {found[path.stem]})")
        found[path.stem] = path
    return found


def sort_key(stem: str):
    """Natural order: '2' before '10'."""
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def find_pairs(root: str | Path, images: str = "images", masks: str = "masks") -> list[Pair]:
    """Match ``root/images`` and ``root/masks`` by stem; an image without a mask (or vice versa) is an error."""
    root = Path(root)
    image_files = _list_by_stem(root / images)
    mask_files = _list_by_stem(root / masks)
    if not image_files:
        raise ValueError(f"{root / images}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    lonely = sorted(set(image_files) ^ set(mask_files))
    if lonely:
        where = [str(image_files.get(s) or mask_files.get(s)) for s in lonely[:5]]
        raise ValueError(f"{root}: {len(lonely)} file(s) without a partner image/mask by stem, e.g. {where}")
    return [Pair(s, image_files[s], mask_files[s]) for s in sorted(image_files, key=sort_key)]


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot read image ({err})") from None


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    array = array.astype(np.float64)
    lo, hi = float(array.min()), float(array.max())
    return np.zeros(array.shape, np.uint8) if hi <= lo else ((array - lo) / (hi - lo) * 255).round().astype(np.uint8)


def load_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    path = Path(path)
    image = _open(path)
    if image.mode in ("RGB", "L"):
        array = np.asarray(image)
    elif image.mode in ("RGBA", "P", "LA", "CMYK", "YCbCr", "1"):
        array = np.asarray(image.convert("RGB"))
    else:  # I;16, I, F: high bit depth, min-max scaled
        array = _to_uint8(np.asarray(image))
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] < 3:
        raise ValueError(f"{path}: unexpected image shape {array.shape}")
    return np.ascontiguousarray(array[..., :3])


MASK_RULES = ("binary", "refuge_cup")


def load_mask(path: str | Path, rule: str = "binary") -> np.ndarray:
    """(H, W) bool foreground mask.

    ``binary``: > 127 for 8-bit masks, > 0 for label maps whose maximum is 1. ``refuge_cup`` (REFUGE optic cup):
    a mask holding REFUGE grey levels (0 cup, 128 rim, 255 background; detected by any pixel in 64..191) gives
    cup = pixels < 64; a two-level mask is read as ``binary`` (255 = cup), the SDSeg-prepared form.
    """
    path = Path(path)
    if rule not in MASK_RULES:
        raise ValueError(f"{path}: unknown mask rule {rule!r} (choose from {MASK_RULES})")
    image = _open(path)
    array = np.asarray(image.convert("L") if image.mode in ("RGB", "RGBA", "P", "LA", "1") else image)
    if array.ndim == 3:
        array = array.max(axis=-1)
    if array.dtype != np.uint8:
        if array.max() <= 1:
            return array > 0
        if array.max() > 255:
            array = array.astype(np.float64) * (255.0 / 65535.0)
    if rule == "refuge_cup" and np.any((array >= 64) & (array < 192)):
        return array < 64
    return array > 0 if array.max() == 1 else array > 127


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize as a soft map and re-threshold at 0.5, which keeps thin structures better than nearest."""
    if mask.shape == (size, size):
        return mask
    soft = Image.fromarray(mask.astype(np.float32)).resize((size, size), Image.BILINEAR)
    return np.asarray(soft) > 0.5


def load_arrays(pairs: list[Pair], resolution: int, desc: str = "loading") -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, R, R) uint8 and masks (N, R, R) bool, resized to the processing resolution."""
    images = np.empty((len(pairs), resolution, resolution, 3), np.uint8)
    masks = np.empty((len(pairs), resolution, resolution), bool)
    for i, pair in enumerate(tqdm(pairs, desc=desc, leave=False, disable=len(pairs) < 50)):
        image, mask = load_image(pair.image), load_mask(pair.mask, pair.mask_rule)
        if image.shape[:2] != mask.shape:
            raise ValueError(f"{pair.image} is {image.shape[1]}x{image.shape[0]} but {pair.mask} is "
                             f"{mask.shape[1]}x{mask.shape[0]}")
        images[i], masks[i] = resize_image(image, resolution), resize_mask(mask, resolution)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(masks)


def flip(x: torch.Tensor, hflip: bool, vflip: bool) -> torch.Tensor:
    """Flip the last two axes: hflip mirrors width, vflip mirrors height."""
    dims = [d for d, on in ((-1, hflip), (-2, vflip)) if on]
    return x.flip(dims) if dims else x


# ---------------------------------------------------------------------------------------------- split files

def make_split(stems: list[str], train: float = 0.7, val: float = 0.1, test: float = 0.2, seed: int = 0) -> dict:
    """Sorted stems, shuffled with ``random.Random(seed)``, cut by fractions (val and test rounded, train the rest)."""
    if min(train, val, test) < 0 or abs(train + val + test - 1) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got train={train} val={val} test={test}")
    order = sorted(stems, key=sort_key)
    random.Random(seed).shuffle(order)
    n_val, n_test = round(len(order) * val), round(len(order) * test)
    n_train = len(order) - n_val - n_test
    if n_train <= 0:
        raise ValueError(f"split leaves no training images ({len(order)} images)")
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {**{k: sorted(v, key=sort_key) for k, v in parts.items()}, "seed": seed,
            "fractions": {"train": train, "val": val, "test": test}}


def write_json_atomic(obj, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_split(path: str | Path, stems: list[str] | None = None) -> dict:
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: split file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    missing_keys = [k for k in SPLITS if not isinstance(split.get(k), list)]
    if missing_keys:
        raise ValueError(f"{path}: split file lacks list(s) {missing_keys}")
    seen = [s for k in SPLITS for s in split[k]]
    if len(seen) != len(set(seen)):
        raise ValueError(f"{path}: a stem appears in more than one split (or twice)")
    if stems is not None:
        unknown = sorted(set(seen) - set(stems), key=sort_key)
        if unknown:
            raise ValueError(f"{path}: {len(unknown)} stem(s) not in the data folder, e.g. {unknown[:5]}")
    return split


def select(pairs: list[Pair], stems: list[str]) -> list[Pair]:
    by_stem = {p.stem: p for p in pairs}
    return [by_stem[s] for s in stems]
