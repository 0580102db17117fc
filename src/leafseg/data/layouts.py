"""Dataset layouts: the folder layouts users download, each with its split rule.

Every layout turns a dataset root into a sorted list of :class:`Pair` (stem, image, mask, mask rule, official
subset); :func:`find_dataset` picks the layout by name. The split file is then made by
:func:`leafseg.data.splits.make_dataset_split`:

==============  ==========================================================  ============================================
layout          expected files                                              split rule
==============  ==========================================================  ============================================
folder          ``images/<stem>.*`` + ``masks/<stem>.*``                    sorted + seeded train/val/test fractions
cvc-clinicdb    ``Original/N.tif|png`` + ``Ground Truth/N.tif|png`` (or     sorted + seeded fractions (the paper's split
                the generic ``images/`` + ``masks/``)                       followed directory order: irreproducible)
kvasir-seg      ``images/*.jpg`` + ``masks/*.jpg``                          sorted + seeded 0.8/0.1/0.1 (SDSeg's
                                                                            800/100/100 proportions)
isic2018        ``ISIC_<id>.jpg`` + ``ISIC_<id>_segmentation.png``          sorted + seeded; the paper's 1815 / rest of
                anywhere below the root (the official Task 1 folders)       the training folder is 0.7 (its selection
                                                                            is not published)
qata-cov19      ``<train folder>/Images/X.png`` +                           the dataset's own test folder is the test
                ``<train folder>/Ground-truths/mask_X.png``, same for the   split (as the paper); val is a seeded
                test folder (folder names containing "train" / "test")      fraction of the official train folder
refuge2         ``{train,val,test}/{images,masks}/`` (disc-cropped, SDSeg   official subsets; val from train if absent.
                preparation); masks either REFUGE grey levels (0 cup, 128   Foreground is the optic **cup**
                rim, 255 background) or binary cup masks (255 = cup)
==============  ==========================================================  ============================================

Seeded splits shuffle the *sorted* stems with ``random.Random(seed)``, so a split never depends on listing order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from .io import IMAGE_EXTENSIONS, file_stem, list_images, sort_key
from .labels import LabelTable, find_label_table, read_label_table

__all__ = ["LAYOUTS", "Layout", "Pair", "dataset_labels", "find_dataset", "find_pairs", "match_pairs"]


@dataclass(frozen=True)
class Pair:
    stem: str
    image: Path
    mask: Path | None
    mask_rule: str = "binary"   # how the mask file becomes a foreground mask (see ``leafseg.data.io.load_mask``)
    subset: str | None = None   # the dataset's own train/val/test folder, where it has one
    labels: LabelTable | None = None  # the label table of a multi-class dataset (None: one structure)


@dataclass(frozen=True)
class Layout:
    name: str
    find: Callable[[Path], list[Pair]]
    split_rule: str
    default_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)


def _first_dir(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"{root}: no {what} folder (looked for {', '.join(repr(n) for n in names)})")


def match_pairs(images: list[Path], masks: list[Path], mask_stem: Callable[[str], str] = lambda s: s,
                where: Path | None = None, subset: str | None = None, mask_rule: str = "binary") -> list[Pair]:
    """Pair images with masks by ``mask_stem(image stem) == mask stem``, sorted in natural stem order. Two files
    with one stem, an image without a mask or a mask without an image, or no pair at all, is an error naming the
    files."""
    by_stem: dict[str, Path] = {}
    for m in masks:
        if file_stem(m) in by_stem:
            raise ValueError(f"{m}: two masks share the stem {file_stem(m)!r} (the other is {by_stem[file_stem(m)]})")
        by_stem[file_stem(m)] = m
    pairs, used, lonely = [], set(), []
    seen: dict[str, Path] = {}
    for image in images:
        stem = file_stem(image)
        if stem in seen:
            raise ValueError(f"{image}: two images share the stem {stem!r} (the other is {seen[stem]})")
        seen[stem] = image
        key = mask_stem(stem)
        if key not in by_stem:
            lonely.append(image)
            continue
        used.add(key)
        pairs.append(Pair(stem, image, by_stem[key], mask_rule, subset))
    lonely += [m for s, m in by_stem.items() if s not in used]
    if lonely:
        raise ValueError(f"{where}: {len(lonely)} file(s) without a partner image/mask, e.g. "
                         f"{[str(p) for p in lonely[:5]]}")
    if not pairs:
        raise ValueError(f"{where}: no image/mask pairs found ({', '.join(IMAGE_EXTENSIONS)})")
    return sorted(pairs, key=lambda p: sort_key(p.stem))


def find_pairs(root: str | Path, images: str = "images", masks: str = "masks") -> list[Pair]:
    """The ``folder`` layout: ``root/images`` and ``root/masks`` matched by stem."""
    root = Path(root)
    return match_pairs(list_images(root / images), list_images(root / masks), where=root)


def _find_cvc(root: Path) -> list[Pair]:
    if (root / "Original").is_dir():
        masks = _first_dir(root, ("Ground Truth", "GroundTruth", "Ground_Truth"), "ground-truth")
        return match_pairs(list_images(root / "Original"), list_images(masks), lambda s: s, root)
    return find_pairs(root)


def _find_kvasir(root: Path) -> list[Pair]:
    if (root / "Kvasir-SEG").is_dir():  # the zip unpacks into Kvasir-SEG/
        root = root / "Kvasir-SEG"
    return find_pairs(root)


_ISIC_IMAGE = re.compile(r"^ISIC_\d+$")
_ISIC_MASK = re.compile(r"^(ISIC_\d+)_segmentation$")


def _find_isic(root: Path) -> list[Pair]:
    files = [p for p in sorted(root.rglob("ISIC_*")) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    images = [p for p in files if _ISIC_IMAGE.match(p.stem)]
    masks = [p for p in files if _ISIC_MASK.match(p.stem)]
    if not images:
        raise ValueError(f"{root}: no ISIC_<id>.jpg images below this folder")
    return match_pairs(images, masks, lambda s: f"{s}_segmentation", root)


def _subset_of(name: str) -> str | None:
    low = name.lower()
    for subset in ("train", "val", "test"):
        if subset in low:
            return subset
    return None


def _find_qata(root: Path) -> list[Pair]:
    pairs: list[Pair] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        subset = _subset_of(folder.name)
        if subset is None or not (folder / "Images").is_dir():
            continue
        masks = _first_dir(folder, ("Ground-truths", "Ground-Truths", "Ground truths", "GroundTruths"),
                           "ground-truth")
        pairs += match_pairs(list_images(folder / "Images"), list_images(masks), lambda s: f"mask_{s}", folder, subset)
    if not pairs:
        raise FileNotFoundError(f"{root}: no train/test folders with Images/ and Ground-truths/ (QaTa-COV19 layout)")
    return _unique(pairs, root)


def _find_refuge(root: Path) -> list[Pair]:
    pairs: list[Pair] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        subset = _subset_of(folder.name)
        if subset is None:
            continue
        images = _first_dir(folder, ("images", "Images", "image"), "image")
        masks = _first_dir(folder, ("masks", "Masks", "mask", "gts", "GT"), "mask")
        pairs += match_pairs(list_images(images), list_images(masks), lambda s: s, folder, subset,
                             mask_rule="refuge_cup")
    if not pairs:
        raise FileNotFoundError(f"{root}: no train/val/test folders with images/ and masks/ (REFUGE2 layout)")
    return _unique(pairs, root)


def _unique(pairs: list[Pair], root: Path) -> list[Pair]:
    seen: dict[str, Pair] = {}
    for p in pairs:
        if p.stem in seen:
            raise ValueError(f"{root}: {p.image} and {seen[p.stem].image} share the stem {p.stem!r}; stems must be "
                             "unique across the dataset's subsets")
        seen[p.stem] = p
    return sorted(pairs, key=lambda p: sort_key(p.stem))


LAYOUTS: dict[str, Layout] = {
    "folder": Layout("folder", find_pairs, "sorted + seeded fractions"),
    "cvc-clinicdb": Layout("cvc-clinicdb", _find_cvc, "sorted + seeded fractions"),
    "kvasir-seg": Layout("kvasir-seg", _find_kvasir, "sorted + seeded fractions (SDSeg: 800/100/100)",
                         (0.8, 0.1, 0.1)),
    "isic2018": Layout("isic2018", _find_isic, "sorted + seeded fractions (paper: 1815 train of 2594)"),
    "qata-cov19": Layout("qata-cov19", _find_qata, "official test folder; val seeded from the official train"),
    "refuge2": Layout("refuge2", _find_refuge, "official subsets; val seeded from train if there is none"),
}


def find_dataset(root: str | Path, layout: str = "folder", images: str = "images", masks: str = "masks",
                 labels: str | Path | None = None) -> list[Pair]:
    """All image/mask pairs of a dataset root in the given layout (see the module docstring). A multi-class dataset
    is one whose label table (``labels``, else a ``labels.json`` / nnU-Net ``dataset.json`` in the root) names
    several structures: its pairs carry the table, and their masks are read as label maps."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown data layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found")
    pairs = find_pairs(root, images, masks) if layout == "folder" else LAYOUTS[layout].find(root)
    table = dataset_labels(root, labels)
    if table is None or table.binary:
        return pairs
    return [replace(p, labels=table) for p in pairs]


def dataset_labels(root: str | Path, labels: str | Path | None = None) -> LabelTable | None:
    """The label table of a dataset: the file ``labels`` if given, else the one found in ``root``, else None."""
    path = Path(labels) if labels is not None else find_label_table(root)
    return None if path is None else read_label_table(path)
