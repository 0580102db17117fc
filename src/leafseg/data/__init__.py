"""Data: reading images and masks (``io``; NIfTI/DICOM volumes in ``volumes``), the dataset layouts users download
(``layouts``), label tables of multi-class datasets (``labels``), split files (``splits``), augmentation
(``augment``), decoded samples on disk (``store``) and the streaming training loader (``loader``). The names below
are the package's public face."""

from .augment import ColourJitter, SampleAugmentation
from .io import (IMAGE_EXTENSIONS, MASK_RULES, file_stem, flip, left_out, list_images, load_arrays, load_image,
                 load_label_map, load_mask, load_pair_mask, load_samples, mask_from_array, resize_image,
                 resize_labels, resize_mask, sort_key, volume_pair_slices)
from .labels import LabelTable, find_label_table, read_label_table
from .layouts import LAYOUTS, Layout, Pair, dataset_labels, find_dataset, find_pairs, match_pairs
from .volumes import Volume, is_volume, read_volume, slices_along, to_uint8, volume_depth, write_mask_volume
from .store import RowFile, SampleStore, build_sample_store
from .splits import (SPLITS, load_or_create_split, make_dataset_split, make_split, read_split, read_split_groups,
                     select, split_digest, write_or_show_split)

__all__ = [
    "ColourJitter", "RowFile", "SampleAugmentation", "SampleStore", "build_sample_store",
    "IMAGE_EXTENSIONS", "LAYOUTS", "MASK_RULES", "SPLITS", "Layout", "Pair", "Volume", "file_stem", "find_dataset",
    "find_pairs", "flip", "is_volume", "left_out", "list_images", "load_arrays", "load_image", "load_mask",
    "load_or_create_split",
    "load_samples", "make_dataset_split", "mask_from_array", "read_volume", "slices_along", "to_uint8",
    "volume_depth", "volume_pair_slices", "write_mask_volume",
    "make_split", "match_pairs", "read_split", "resize_image", "resize_mask", "select", "sort_key", "split_digest",
    "write_or_show_split", "LabelTable", "dataset_labels", "find_label_table", "load_label_map", "load_pair_mask",
    "read_label_table",
    "read_split_groups", "resize_labels",
]
