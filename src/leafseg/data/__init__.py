"""Data: reading images and masks (``io``), the dataset layouts users download (``layouts``) and split files
(``splits``). The names below are the package's public face."""

from .io import (IMAGE_EXTENSIONS, MASK_RULES, flip, list_images, load_arrays, load_image, load_mask, resize_image,
                 resize_mask, sort_key)
from .layouts import LAYOUTS, Layout, Pair, find_dataset, find_pairs, match_pairs
from .splits import (SPLITS, load_or_create_split, make_dataset_split, make_split, read_split, select,
                     split_digest, write_or_show_split)

__all__ = [
    "IMAGE_EXTENSIONS", "LAYOUTS", "MASK_RULES", "SPLITS", "Layout", "Pair", "find_dataset", "find_pairs", "flip",
    "list_images", "load_arrays", "load_image", "load_mask", "load_or_create_split", "make_dataset_split",
    "make_split", "match_pairs", "read_split", "resize_image", "resize_mask", "select", "sort_key", "split_digest",
    "write_or_show_split",
]
