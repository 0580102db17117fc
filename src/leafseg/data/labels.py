"""Label tables: which mask value is which structure, as nnU-Net and MONAI users write them.

A dataset with several structures keeps one label map per image (0 background, 1..255 the structures) and a table
beside the masks that names the values: a ``labels.json`` (either ``{"0": "background", "1": "right lung", ...}``
or ``{"background": 0, "right lung": 1, ...}``), or nnU-Net v2's ``dataset.json`` with its ``"labels"`` entry.
:func:`find_label_table` looks for them in a dataset root; :class:`LabelTable` turns a mask's values into class
indices 0..K (0 = background, K = the number of structures) and back, and refuses a value the table does not name,
naming the file and the value. A table with one structure is a binary dataset, read exactly as one without a table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LabelTable", "TABLE_FILES", "find_label_table", "read_label_table"]

#: the files :func:`find_label_table` looks for, in this order
TABLE_FILES = ("labels.json", "dataset.json")


@dataclass(frozen=True)
class LabelTable:
    """Class index k (0 = background) is the structure ``names[k]`` written as ``values[k]`` in the masks."""

    names: tuple[str, ...]
    values: tuple[int, ...]
    source: str = ""

    def __post_init__(self):
        where = self.source or "label table"
        if len(self.names) != len(self.values) or len(self.names) < 2:
            raise ValueError(f"{where}: a label table needs the background and at least one structure")
        if self.values[0] != 0:
            raise ValueError(f"{where}: the background must be value 0 (it is {self.values[0]})")
        if len(set(self.values)) != len(self.values) or len(set(self.names)) != len(self.names):
            shown = dict(zip(self.names, self.values))
            raise ValueError(f"{where}: each value and each name may appear once ({shown})")
        if any(not 0 <= v <= 255 for v in self.values):
            raise ValueError(f"{where}: label values must be 0..255 (8-bit label maps); got {list(self.values)}")

    @property
    def num_classes(self) -> int:
        """K, the number of structures (the background not counted)."""
        return len(self.values) - 1

    @property
    def binary(self) -> bool:
        return self.num_classes == 1

    @property
    def foreground(self) -> dict[int, str]:
        """{class index: name} of the structures, 1..K."""
        return {k: self.names[k] for k in range(1, len(self.names))}

    @property
    def lateral(self) -> list[str]:
        """Structures named by their side ("left lung", "right kidney"): a mirrored image would swap them."""
        return [n for n in self.names if any(w in ("left", "right") for w in n.lower().replace("_", " ").split())]

    def check_mirroring(self, what: str) -> None:
        """Refuse ``what`` (a mirroring of images) when structures are named by side."""
        if self.lateral:
            raise ValueError(f"{what} mirrors the image, but {self.lateral} are named by their side: a mirrored image "
                             "would swap them; leave it off for this model")

    def to_dict(self) -> dict[str, int]:
        """``{name: value}``, nnU-Net's ``labels`` form (what a saved model records)."""
        return dict(zip(self.names, self.values))

    @classmethod
    def from_dict(cls, labels: dict, source: str = "") -> LabelTable:
        """From ``{name: value}`` (nnU-Net) or ``{"value": name}`` (labels.json); sorted by value."""
        where = source or "label table"
        if not isinstance(labels, dict) or not labels:
            raise ValueError(f"{where}: expected a non-empty mapping of names to values")
        pairs = []
        for key, val in labels.items():
            if isinstance(val, list):
                raise ValueError(f"{where}: {key!r} is a region ({val}), an nnU-Net region-based label; leafseg "
                                 "reads one value per structure")
            if isinstance(val, bool):
                raise ValueError(f"{where}: {key!r}: {val!r} is not a label value")
            if isinstance(val, int):
                pairs.append((val, str(key)))
            elif isinstance(val, str) and str(key).strip().isdigit():
                pairs.append((int(key), val))
            else:
                raise ValueError(f"{where}: cannot read {key!r}: {val!r}; write {{\"name\": value}} or "
                                 "{\"value\": \"name\"}")
        pairs.sort()
        return cls(tuple(n for _, n in pairs), tuple(v for v, _ in pairs), source)

    def indices(self, array: np.ndarray, path: str | Path = "mask") -> np.ndarray:
        """A mask's values -> class indices (uint8, 0..K); a value the table does not name is an error naming
        ``path``, the values and the table."""
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.floating):
            if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
                raise ValueError(f"{path}: a label map holds whole numbers; this one holds fractions")
            array = array.astype(np.int64)
        lut = np.full(256, 255, np.uint8)
        lut[list(self.values)] = np.arange(len(self.values), dtype=np.uint8)
        if array.size and (array.min() < 0 or array.max() > 255):
            unknown = sorted({int(v) for v in np.unique(array) if v not in self.values})
            raise ValueError(f"{path}: mask value(s) {unknown[:10]} not in the label table {self._shown()}")
        out = lut[array.astype(np.int64)]
        if (out == 255).any():
            unknown = sorted({int(v) for v in np.unique(array[out == 255])})
            raise ValueError(f"{path}: mask value(s) {unknown[:10]} not in the label table {self._shown()}")
        return out

    def values_of(self, indices: np.ndarray) -> np.ndarray:
        """Class indices 0..K -> the table's values (uint8), for label maps written back."""
        return np.asarray(self.values, np.uint8)[np.asarray(indices, np.int64)]

    def _shown(self) -> str:
        where = f" ({self.source})" if self.source else ""
        return f"{self.to_dict()}{where}"


def read_label_table(path: str | Path) -> LabelTable:
    """A ``labels.json`` or nnU-Net ``dataset.json`` (its ``labels`` entry) -> :class:`LabelTable`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a JSON file ({err})") from None
    if isinstance(data, dict) and "labels" in data and isinstance(data["labels"], dict):
        data = data["labels"]  # nnU-Net v2 dataset.json
    elif path.name == "dataset.json":
        raise ValueError(f"{path}: no \"labels\" entry (nnU-Net's dataset.json names its labels there)")
    return LabelTable.from_dict(data, str(path))


def find_label_table(root: str | Path) -> Path | None:
    """The label table of the dataset at ``root``: ``labels.json`` or ``dataset.json`` in it, or None."""
    for name in TABLE_FILES:
        if (Path(root) / name).is_file():
            return Path(root) / name
    return None
