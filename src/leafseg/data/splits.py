"""Split files: one maker (each layout's rule), one reader, their digest, and load-or-create.

A split file is JSON ``{"train": [...], "val": [...], "test": [...], "seed": s, "fractions": {...}, "rule": ...,
"layout": ...}``, written once next to the run (or given by the user) and reused, so a split never depends on
directory listing order: seeded splits shuffle the *sorted* stems with ``random.Random(seed)``.
"""

from __future__ import annotations

import random
from pathlib import Path

from ..files import read_json, sha256_file, write_json
from .io import sort_key
from .layouts import LAYOUTS, Pair, find_dataset

__all__ = ["SPLITS", "load_or_create_split", "make_dataset_split", "make_split", "read_split", "select",
           "split_digest", "write_or_show_split"]

SPLITS = ("train", "val", "test")


def _seeded_shuffle(stems: list[str], seed: int) -> list[str]:
    order = sorted(stems, key=sort_key)
    random.Random(seed).shuffle(order)
    return order


def make_split(stems: list[str], train: float = 0.7, val: float = 0.1, test: float = 0.2, seed: int = 0,
               groups: dict[str, str] | None = None) -> dict:
    """Sorted stems, shuffled with ``random.Random(seed)``, cut by fractions (val and test rounded, train the rest).

    With ``groups`` ({stem: group}, e.g. the patient of each image) whole groups are shuffled and cut, so no patient
    has images in two splits; val and test then take groups until they hold their share of the images."""
    if min(train, val, test) < 0 or abs(train + val + test - 1) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got train={train} val={val} test={test}")
    if groups is not None:
        return _grouped_split(stems, groups, train, val, test, seed)
    order = _seeded_shuffle(stems, seed)
    n_val, n_test = round(len(order) * val), round(len(order) * test)
    n_train = len(order) - n_val - n_test
    if n_train <= 0:
        raise ValueError(f"split leaves no training images ({len(order)} images)")
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {**{k: sorted(v, key=sort_key) for k, v in parts.items()}, "seed": seed,
            "fractions": {"train": train, "val": val, "test": test}}


def _grouped_split(stems: list[str], groups: dict[str, str], train: float, val: float, test: float,
                   seed: int) -> dict:
    missing = [s for s in stems if s not in groups]
    if missing:
        raise ValueError(f"groups: {len(missing)} image(s) without a group, e.g. {sorted(missing, key=sort_key)[:5]}")
    members: dict[str, list[str]] = {}
    for stem in stems:
        members.setdefault(groups[stem], []).append(stem)
    order = _seeded_shuffle(list(members), seed)
    want = {"val": round(len(stems) * val), "test": round(len(stems) * test)}
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for group in order:
        # fill val, then test, each up to its share of the images; the rest trains
        part = next((k for k in ("val", "test") if len(parts[k]) < want[k]), "train")
        parts[part] += members[group]
    if not parts["train"]:
        raise ValueError(f"split leaves no training images ({len(stems)} images in {len(members)} groups)")
    return {**{k: sorted(v, key=sort_key) for k, v in parts.items()}, "seed": seed,
            "fractions": {"train": train, "val": val, "test": test}, "grouped_by": "group", "groups": len(members)}


def read_split_groups(path: str | Path, column: str | None = None) -> dict[str, str]:
    """{stem: group} from a CSV with a header: the stem in the column ``stem`` or ``name`` (else the first), the
    group in ``column`` (else the second), e.g. ``sources.csv`` with ``--group-column patientid``."""
    import csv

    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: group file not found") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text CSV file ({err})") from None
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if len(rows) < 2:
        raise ValueError(f"{path}: a header row and at least one row are needed")
    header = [c.strip() for c in rows[0]]
    key = next((i for i, c in enumerate(header) if c.lower() in ("stem", "name")), 0)
    if column is None:
        col = 1
    elif column in header:
        col = header.index(column)
    else:
        raise ValueError(f"{path}: no column {column!r} (columns: {', '.join(header)})")
    out = {}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) <= max(key, col) or not row[col].strip():
            raise ValueError(f"{path}: row {n} has no {header[col]!r} value ({row})")
        out[row[key].strip()] = row[col].strip()
    return out


def make_dataset_split(pairs: list[Pair], train: float | None = None, val: float | None = None,
                       test: float | None = None, seed: int = 0, layout: str = "folder",
                       groups: dict[str, str] | None = None) -> dict:
    """The split for ``pairs`` under its layout's rule.

    Without official subsets: sorted stems, seeded shuffle, cut by the fractions (default: the layout's). With them
    (QaTa-COV19, REFUGE2): the official test (and val, if present) subsets are kept; a missing val is a seeded
    ``val / (train + val)`` fraction of the official train subset; ``test`` is then ignored.
    """
    rules = LAYOUTS.get(layout, LAYOUTS["folder"])
    f_train, f_val, f_test = rules.default_fractions
    train = f_train if train is None else train
    val = f_val if val is None else val
    test = f_test if test is None else test
    subsets = {p.stem: p.subset for p in pairs}
    if not any(subsets.values()):
        split = make_split(list(subsets), train, val, test, seed, groups)
        rule = rules.split_rule + (" (whole groups)" if groups is not None else "")
        return {**split, "rule": rule, "layout": layout}
    if groups is not None:
        raise ValueError(f"{layout}: the dataset has official subsets; a grouped split is for datasets without them")
    official = {k: sorted((s for s, v in subsets.items() if v == k), key=sort_key) for k in SPLITS}
    if not official["train"] or not official["test"]:
        raise ValueError(f"{layout}: the dataset's official subsets need both a train and a test folder "
                         f"(found {', '.join(f'{k}: {len(v)}' for k, v in official.items())})")
    if not official["val"]:
        if val + train <= 0:
            raise ValueError("split fractions: train + val must be > 0")
        order = _seeded_shuffle(official["train"], seed)
        n_val = round(len(order) * val / (train + val))
        official["val"], official["train"] = sorted(order[:n_val], key=sort_key), sorted(order[n_val:], key=sort_key)
    return {**official, "seed": seed, "fractions": {"val_of_train": val / (train + val)},
            "rule": rules.split_rule, "layout": layout}


def read_split(path: str | Path, stems: list[str] | None = None) -> dict:
    """A split file, checked: three lists, no stem twice, and (given ``stems``) no stem outside the dataset."""
    path = Path(path)
    split = read_json(path, "split file")
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


def split_digest(path: str | Path) -> str:
    """sha256 of a split file's bytes (recorded with every evaluation)."""
    return sha256_file(path)


def load_or_create_split(path: str | Path, pairs: list[Pair], layout: str = "folder", train: float | None = None,
                         val: float | None = None, test: float | None = None, seed: int = 0) -> dict:
    """Reuse the split file at ``path`` (validated against the dataset's stems), else make and write it."""
    path = Path(path)
    if path.exists():
        return read_split(path, [p.stem for p in pairs])
    split = make_dataset_split(pairs, train, val, test, seed, layout)
    write_json(split, path)
    return split


def write_or_show_split(root: str | Path, layout: str, output: str | Path, train: float | None = None,
                        val: float | None = None, test: float | None = None, seed: int = 0, images: str = "images",
                        masks: str = "masks", force: bool = False, groups: str | Path | None = None,
                        group_column: str | None = None) -> str:
    """``leafseg split``: write the split file of a dataset by its layout's rule (or, if it exists and not
    ``force``, read and check it); returns a summary to print."""
    pairs = find_dataset(root, layout, images, masks)
    out = Path(output)
    if out.exists() and not force:
        split = read_split(out, [p.stem for p in pairs])
        lines = [f"{out} exists (pass --force to replace it); it holds:"]
    else:
        by_group = read_split_groups(groups, group_column) if groups is not None else None
        split = make_dataset_split(pairs, train, val, test, seed, layout, by_group)
        if by_group is not None:
            split["grouped_by"] = f"{Path(groups).name}:{group_column or 'second column'}"
        write_json(split, out)
        lines = [f"wrote {out}:"]
    for name in SPLITS:
        stems = split[name]
        lines.append(f"  {name:5s} {len(stems):6d}  {', '.join(stems[:5])}{' ...' if len(stems) > 5 else ''}")
    unused = len(pairs) - sum(len(split[k]) for k in SPLITS)
    lines.append(f"  rule: {split.get('rule', 'n/a')}; seed {split.get('seed')}; {len(pairs)} pairs in {root}"
                 f"{f' ({unused} not in any split)' if unused else ''}; sha256 {split_digest(out)[:16]}")
    return "\n".join(lines)
