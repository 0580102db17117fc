"""Reading images and masks, resizing them to the processing resolution, flips, and in-memory arrays.

Images may be RGB, RGBA (alpha dropped), greyscale (replicated) or 16-bit (min-max scaled to 8 bit). Masks are
read by what they encode (labels, palette indices, intensities, alpha; see :func:`mask_from_array`), and a mask whose
encoding is ambiguous is refused. Every read error names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

if TYPE_CHECKING:
    import torch

from .volumes import VOLUME_SUFFIXES, is_volume, read_volume, slices_along, to_uint8, volume_stem

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
READABLE = IMAGE_EXTENSIONS + VOLUME_SUFFIXES + ("DICOM series folders",)


def is_image_file(path: Path) -> bool:
    """A 2D image file, a NIfTI/DICOM file, or a folder holding a DICOM series (by name; hidden files excluded)."""
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return is_volume(path)
    if not path.is_file():  # a named pipe, socket or device: reading it could block forever
        return False
    return path.suffix.lower() in IMAGE_EXTENSIONS or path.name.lower().endswith(VOLUME_SUFFIXES)


def file_stem(path: Path) -> str:
    """The name without its extension (``case.nii.gz`` -> ``case``)."""
    return volume_stem(path) if path.is_dir() or path.name.lower().endswith(VOLUME_SUFFIXES) else path.stem


def list_images(folder: str | Path) -> list[Path]:
    """Images (2D files, NIfTI/DICOM volumes, DICOM series folders) directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    return [p for p in sorted(folder.iterdir()) if is_image_file(p)]


def left_out(folder: str | Path) -> list[tuple[Path, str]]:
    """The entries of ``folder`` that :func:`list_images` does not read although they could be meant as inputs, each
    with the reason: hidden image files, named pipes / sockets / devices, links that lead nowhere or in a circle, and
    sub-folders that are not DICOM series. Plain files with other extensions (notes, CSVs) are not listed."""
    out = []
    for p in sorted(Path(folder).iterdir()):
        if is_image_file(p):
            continue
        looks_like_image = p.suffix.lower() in IMAGE_EXTENSIONS or p.name.lower().endswith(VOLUME_SUFFIXES)
        if p.is_symlink() and not p.exists():
            try:
                p.resolve(strict=True)
                reason = "a link that leads nowhere"
            except RuntimeError:
                reason = "a link that leads in a circle"
            except OSError as err:
                reason = ("a link that leads in a circle" if err.errno == 40 else "a link that leads nowhere")
        elif p.name.startswith(".") and looks_like_image:
            reason = "a hidden file (its name starts with a dot)"
        elif p.exists() and not p.is_dir() and not p.is_file():
            reason = "not a regular file (a named pipe, socket or device: reading it could block)"
        elif p.is_dir() and not p.name.startswith("."):
            reason = "a folder that is not a DICOM series (only images directly in the folder are read)"
        else:
            continue
        out.append((p, reason))
    return out


def sort_key(stem: str):
    """Natural order: '2' before '10'."""
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _open(path: Path) -> Image.Image:
    """The image as it is displayed: a camera's EXIF orientation applied (images and masks alike, so a pair stays
    aligned); a file of several pages or frames (multi-page TIFF, animation) is refused rather than read in part."""
    try:
        image = Image.open(path)
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise ValueError(f"{path}: holds {frames} pages/frames; leafseg reads single images (save the one you "
                             "mean as its own file, or give a stack as a NIfTI/DICOM volume)")
        image.load()
        return ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"{path}: refused: {err} (raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot read image ({err}); readable formats: {', '.join(READABLE)}") from None


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    array = array.astype(np.float64)
    lo, hi = float(array.min()), float(array.max())
    return np.zeros(array.shape, np.uint8) if hi <= lo else ((array - lo) / (hi - lo) * 255).round().astype(np.uint8)


def _single_slice(path: Path) -> np.ndarray:
    volume = read_volume(path)
    if volume.array.shape[2] != 1:
        raise ValueError(f"{path}: a 3D volume ({'x'.join(map(str, volume.array.shape))}); leafseg reads volumes "
                         "slice by slice: give it as a volume pair to train/evaluate, or to predict")
    return volume.array[..., 0]


def _scaled(array: np.ndarray, intensity: dict | None, path: Path) -> np.ndarray:
    try:
        return to_uint8(array, intensity)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_image(path: str | Path, intensity: dict | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB. A 2D NIfTI/DICOM image is scaled to 8 bit by ``intensity`` (see
    :func:`leafseg.data.volumes.to_uint8`)."""
    path = Path(path)
    if is_volume(path):
        return np.repeat(_scaled(_single_slice(path), intensity, path)[..., None], 3, axis=-1)
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


def load_label_map(path: str | Path, table) -> np.ndarray:
    """(H, W) uint8 class indices 0..K of a multi-class label map (PNG grey or palette indices, 16-bit PNG, a 2D
    NIfTI/DICOM), by ``table`` (a :class:`~leafseg.data.labels.LabelTable`); a value the table does not name is an
    error naming the file and the value."""
    path = Path(path)
    if is_volume(path):
        return table.indices(_single_slice(path), path)
    image = _open(path)
    if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
        raise ValueError(f"{path}: a {image.mode} image; a label map is one plane of values (grey or palette PNG, "
                         f"NIfTI), each value a structure of the label table {table.to_dict()}")
    return table.indices(np.asarray(image), path)


def load_pair_mask(pair) -> np.ndarray:
    """The mask of a 2D :class:`~leafseg.data.layouts.Pair`: a label map (uint8 class indices) when the pair carries
    a multi-class label table, else the bool foreground."""
    table = getattr(pair, "labels", None)
    if table is not None and not table.binary:
        return load_label_map(pair.mask, table)
    return load_mask(pair.mask, pair.mask_rule)


def load_mask(path: str | Path, rule: str = "binary") -> np.ndarray:
    """(H, W) bool foreground mask, read by what the file encodes (see :func:`mask_from_array`).

    ``refuge_cup`` (REFUGE optic cup): a mask holding REFUGE grey levels (0 cup, 128 rim, 255 background; detected by
    any pixel in 64..191) gives cup = pixels < 64; a two-level mask is read as ``binary`` (255 = cup), the
    SDSeg-prepared form.
    """
    path = Path(path)
    if rule not in MASK_RULES:
        raise ValueError(f"{path}: unknown mask rule {rule!r} (choose from {MASK_RULES})")
    if is_volume(path):
        return mask_from_array(_single_slice(path), path)
    image = _open(path)
    if rule == "refuge_cup":
        grey = np.asarray(image.convert("L"))
        if np.any((grey >= 64) & (grey < 192)):
            return grey < 64
    return mask_from_array(_mask_plane(image), path, palette=image.mode == "P")


def _mask_plane(image: Image.Image) -> np.ndarray:
    """The one 2-D plane of a mask image that carries the mask: palette indices for P; alpha where the colour is
    the same everywhere (RGBA/LA masks drawn in the alpha channel); else the brightest colour channel (so a red
    object on black counts, which a grey conversion would dim to 76)."""
    if image.mode == "1":
        return np.asarray(image).astype(bool)
    array = np.asarray(image)
    if image.mode in ("RGBA", "LA"):
        colour, alpha = array[..., :-1], array[..., -1]
        constant_colour = all(np.ptp(colour[..., c]) == 0 for c in range(colour.shape[-1]))
        if constant_colour and np.ptp(alpha) > 0:
            return alpha
        array = colour
    if array.ndim == 3:
        array = array.max(axis=-1)
    return array


VOID_LABEL_MAX = 20  # grey values up to this beside 255, and nothing else, are labels with a void border


def mask_from_array(array: np.ndarray, path: str | Path = "mask", palette: bool = False) -> np.ndarray:
    """The foreground of one mask plane, by its encoding:

    * labels -- values {0, 1}, or {0, k} for one small label k (e.g. {0, 100}): foreground = the non-zero label;
      palette (P-mode) images are always labels, with VOC's 255 "void" border counted as background;
    * intensities -- 0/255 (also JPEG-compressed, i.e. many values, and soft masks): foreground > 127; 16-bit
      masks scaled to 8 bit first; float masks in [0, 1]: > 0.5.
    Anything else -- several labels, a few grey levels none of them near white, or small labels beside 255 (VOC's
    void border saved as grey) -- is ambiguous for a binary task and refused with the file and its values.
    """
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating) and array.max() <= 1:
        return array > 0.5
    if array.max() > 255:
        array = array.astype(np.float64) * (255.0 / 65535.0)
        return array > 127
    values = np.unique(array)
    if palette:
        labels = [v for v in values if v not in (0, 255)] or [v for v in values if v]
        if len(labels) > 1:
            raise ValueError(f"{path}: palette mask with several object labels {[int(v) for v in labels[:10]]}: "
                             "leafseg segments one foreground class; merge the labels or keep one first")
        return array == labels[0] if labels else np.zeros(array.shape, bool)
    if len(values) == 1 or (len(values) == 2 and values[0] == 0):
        return array == values[-1] if values[-1] > 0 else np.zeros(array.shape, bool)
    low = [int(v) for v in values if 0 < v <= VOID_LABEL_MAX]
    if len(values) < 16 and values[-1] == 255 and low and all(v <= VOID_LABEL_MAX or v == 255 for v in values):
        # VOC's convention saved as grey: labels 1..k and a 255 "void" border. Read as intensities, the border
        # would be the object and the object background.
        raise ValueError(f"{path}: mask holds label value(s) {low[:10]} beside 255: a label mask with a 255 "
                         "void/ignore border (VOC style)? Write the object as 255 (or 1) and the border as 0 first; "
                         "leafseg reads a mask either as 0/k labels or as 0/255 intensities, not both")
    if len(values) >= 16 or values[-1] >= 250:
        return array > 127
    shown = ", ".join(str(int(v)) for v in values[:10])
    raise ValueError(f"{path}: ambiguous mask: {len(values)} grey levels ({shown}) - neither 0/1 or 0/k labels nor a "
                     "0/255 intensity mask; leafseg segments one foreground class: convert the mask first")


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize as a soft map and re-threshold at 0.5, which keeps thin structures better than nearest. A label map
    (uint8 class indices) is resized class by class as soft maps, each pixel taking the class of the largest."""
    if mask.shape == (size, size):
        return mask
    if mask.dtype != bool and mask.max() > 1:
        return resize_labels(mask, size)
    soft = Image.fromarray(mask.astype(np.float32)).resize((size, size), Image.BILINEAR)
    return np.asarray(soft) > 0.5


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """(H, W) uint8 class indices -> (size, size): per class a bilinear soft map, then the argmax (ties to the lower
    index, so to the background)."""
    soft = [np.asarray(Image.fromarray((labels == k).astype(np.float32)).resize((size, size), Image.BILINEAR))
            for k in range(int(labels.max()) + 1)]
    return np.argmax(np.stack(soft), axis=0).astype(np.uint8)


def volume_pair_slices(pair, intensity: dict | None = None, axis: int = 2
                       ) -> tuple[list[np.ndarray], list[np.ndarray], object]:
    """The 8-bit RGB slices of a volume pair's image and the mask slices, along ``axis``, and the mask volume."""
    image_volume, mask_volume = read_volume(pair.image), read_volume(pair.mask)
    table = getattr(pair, "labels", None)
    if image_volume.array.shape != mask_volume.array.shape:
        raise ValueError(f"{pair.image} is {'x'.join(map(str, image_volume.array.shape))} but {pair.mask} is "
                         f"{'x'.join(map(str, mask_volume.array.shape))}")
    scaled = _scaled(image_volume.array, intensity, pair.image)
    images = [np.repeat(plane[..., None], 3, axis=-1) for plane in slices_along(scaled, axis)]
    if table is not None and not table.binary:
        masks = [table.indices(m, pair.mask) for m in mask_volume.slices(axis)]
    else:
        masks = [mask_from_array(m, pair.mask) for m in mask_volume.slices(axis)]
    return images, masks, mask_volume


EXIF_ORIENTATION = 0x0112  # 1 upright; 5-8 turn the picture by 90 degrees


def _exif_hint(*paths: Path) -> str:
    """Where a file's EXIF orientation turned it (images are read as displayed), say so: a camera's JPEG whose mask
    was drawn on the stored, unturned pixels mismatches only through that tag."""
    turned = []
    for path in paths:
        try:
            with Image.open(path) as im:
                if im.getexif().get(EXIF_ORIENTATION, 1) not in (1, None):
                    turned.append(Path(path).name)
        except (OSError, ValueError):
            continue
    if not turned:
        return ""
    return (f" after the EXIF orientation of {', '.join(turned)} was applied (leafseg reads images as displayed); "
            "if the mask was drawn on the stored pixels, save the image without the tag or the mask turned alike")


def _samples(pair, intensity, axis, volume_slices) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if not is_volume(pair.image):
        mask, image = load_pair_mask(pair), load_image(pair.image)
        if image.shape[:2] != mask.shape:
            raise ValueError(f"{pair.image} is {image.shape[1]}x{image.shape[0]} but {pair.mask} is "
                             f"{mask.shape[1]}x{mask.shape[0]}{_exif_hint(pair.image, pair.mask)}")
        return [(pair.stem, image, mask)]
    images, masks, _ = volume_pair_slices(pair, intensity, axis)
    keep = range(len(images)) if volume_slices == "all" else [k for k, m in enumerate(masks) if m.any()]
    return [(f"{pair.stem}/{k}", images[k], masks[k]) for k in keep]


def load_samples(pairs: list, resolution: int, desc: str = "loading", intensity: dict | None = None, axis: int = 2,
                 volume_slices: str = "all") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images (N, 3, R, R) uint8, masks (N, R, R) bool and names of :class:`~leafseg.data.layouts.Pair` s, resized
    to the processing resolution. A volume pair gives one sample per slice along ``axis`` (``volume_slices``:
    ``all``, or ``foreground``: only slices whose mask is not empty), named ``stem/k``."""
    import torch  # here, so that reading files (and the CLI's start-up) does not import torch

    if volume_slices not in ("all", "foreground"):
        raise ValueError(f"data.volume_slices must be all or foreground, got {volume_slices!r}")
    names, images, masks = [], [], []
    for pair in tqdm(pairs, desc=desc, leave=False, disable=len(pairs) < 50):
        for name, image, mask in _samples(pair, intensity, axis, volume_slices):
            names.append(name)
            images.append(resize_image(image, resolution))
            masks.append(resize_mask(mask, resolution))
    if not names:
        raise ValueError(f"no samples in {len(pairs)} pair(s) (e.g. {pairs[0].image if pairs else 'none'})")
    return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(np.stack(masks)),
            names)


def load_arrays(pairs: list, resolution: int, desc: str = "loading", **volume_options
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, R, R) uint8 and masks (N, R, R) bool (see :func:`load_samples`)."""
    return load_samples(pairs, resolution, desc, **volume_options)[:2]


def flip(x: torch.Tensor, hflip: bool, vflip: bool) -> torch.Tensor:
    """Flip the last two axes: hflip mirrors width, vflip mirrors height."""
    dims = [d for d, on in ((-1, hflip), (-2, vflip)) if on]
    return x.flip(dims) if dims else x
