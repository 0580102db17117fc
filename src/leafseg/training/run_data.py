"""What a run trains and validates on: one dataset (``data.root``) or several (``data.sources`` beside it), each
with its split file, decoded once into sample stores in the cache folder and read lazily from there."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import Accelerator
from omegaconf import DictConfig

from .. import data as D
from ..config import to_container
from ..data.store import SampleStore, build_sample_store, store_key
from ..files import write_json
from .run_log import say


@dataclass
class DataSource:
    """One dataset of a run: where it is, its layout and its split file."""

    name: str
    root: str
    layout: str
    split_file: Path
    images: str = "images"
    masks: str = "masks"


@dataclass
class RunData:
    """The run's samples, on disk (:class:`~leafseg.data.store.SampleStore`), read as needed. ``train`` holds every
    source's training samples; ``val`` every source's val samples in source order, ``val_sources`` says how many
    belong to which source (validation Dice is the mean of the per-source means, so that a large source does not
    outvote a small one)."""

    sources: list[DataSource]
    train_pairs: list
    train: SampleStore
    val: SampleStore | None
    val_sources: list[tuple[str, int]] = field(default_factory=list)
    train_sources: list[tuple[str, int]] = field(default_factory=list)  # samples of each source in ``train``
    first_pass_s: float = 0.0   # decoding into the stores (0 when a cache folder already held them)
    labels: D.LabelTable | None = None  # the label table of a multi-class run (None: one structure)

    @property
    def num_classes(self) -> int:
        return 1 if self.labels is None else self.labels.num_classes


SOURCES_FILE = "sources.json"


def write_sources(sources: list[DataSource], run_dir: Path) -> None:
    """``RUN/sources.json``: each source's absolute folder, layout and split file, so that ``leafseg evaluate`` finds
    the split a model was trained with (and knows its training images) from any working directory."""
    write_json([{"name": s.name, "root": str(Path(s.root).resolve()), "layout": s.layout,
                 "split_file": str(Path(s.split_file).resolve()), "images": s.images, "masks": s.masks}
                for s in sources], run_dir / SOURCES_FILE)


def volume_config(cfg: DictConfig) -> dict:
    """How volumes become slices (saved with the exported pipeline, so that predict does the same)."""
    return {"intensity": to_container(cfg.data.intensity), "slice_axis": int(cfg.data.slice_axis)}


def cache_dir(cfg: DictConfig, run_dir: Path) -> Path:
    """``run.cache_dir``, or the run folder's ``cache``: decoded samples and frozen training targets."""
    return Path(cfg.run.cache_dir or run_dir / "cache")


def data_sources(cfg: DictConfig, run_dir: Path) -> list[DataSource]:
    """``data.root`` (named after its folder; split file ``data.split_file``, default ``RUN/split.json``) and each
    ``data.sources`` entry (``{name, root, layout, split_file, images, masks}``; name default: its folder's; split
    file default ``RUN/split-NAME.json``)."""
    d = cfg.data
    sources = [DataSource(Path(str(d.root)).resolve().name or "data", str(d.root), str(d.layout),
                          Path(d.split_file or run_dir / "split.json"), d.images, d.masks)]
    for i, entry in enumerate(d.sources):  # typed entries (leafseg.config_schema.SourceConfig)
        name = str(entry.name or Path(entry.root).name)
        if name in [s.name for s in sources]:
            raise ValueError(f"data.sources[{i}]: name {name!r} used twice (give each source its own name)")
        sources.append(DataSource(name, str(entry.root), str(entry.layout),
                                  Path(entry.split_file or run_dir / f"split-{name}.json"), entry.images, entry.masks))
    return sources


def load_run_data(cfg: DictConfig, run_dir: Path, accelerator: Accelerator) -> RunData:
    """Each source in its layout, its split file (made once by the main process, by the layout's rule and
    ``data.split``), and the train and val samples decoded once into sample stores in the cache folder (by the main
    process; every rank then reads them lazily)."""
    sc, res = cfg.data.split, int(cfg.data.resolution)
    train_pairs, val_groups, train_groups = [], [], []
    sources = data_sources(cfg, run_dir)
    tables = []
    for i, source in enumerate(sources):
        pairs = D.find_dataset(source.root, source.layout, source.images, source.masks,
                               cfg.data.labels if i == 0 else None)
        tables.append((source.name, pairs[0].labels))
        if accelerator.is_main_process:
            D.load_or_create_split(source.split_file, pairs, source.layout, sc.train, sc.val, sc.test, sc.seed)
        accelerator.wait_for_everyone()
        split = D.read_split(source.split_file, [p.stem for p in pairs])
        train = D.select(pairs, split["train"])
        train_pairs += train
        train_groups.append((source.name, len(train)))
        val = D.select(pairs, split["val"])
        if cfg.train.val_max_images:
            val = val[: int(cfg.train.val_max_images)]
        val_groups.append((source.name, val))
    if len({t for _, t in tables}) > 1:
        shown = "; ".join(f"{n}: {t.to_dict() if t else 'one structure'}" for n, t in tables)
        raise ValueError(f"the data sources name their structures differently ({shown}); give them one label table")
    if accelerator.is_main_process:
        write_sources(sources, run_dir)
    vc = volume_config(cfg)  # NIfTI/DICOM pairs: one sample per slice
    volumes = {"intensity": vc["intensity"], "axis": vc["slice_axis"], "volume_slices": cfg.data.volume_slices}
    folder = cache_dir(cfg, run_dir)
    started = time.perf_counter()

    def store(name: str, pairs: list) -> SampleStore:
        path = folder / f"samples-{name}-{store_key(pairs, res, volumes)}"
        if accelerator.is_main_process:
            build_sample_store(pairs, res, path, f"decoding {name}", say=say, **volumes)
        accelerator.wait_for_everyone()
        return SampleStore(path)

    if not train_pairs:
        raise ValueError(f"the split file(s) {', '.join(str(s.split_file) for s in sources)} hold no training images")
    train = store("train", train_pairs)
    val_pairs = [p for _, group in val_groups for p in group]
    val = store("val", val_pairs) if val_pairs else None
    val_sources, start = [], 0
    for name, group in val_groups:  # samples per source, in store order (a volume gives one per slice)
        count = sum(val.samples_per_pair[start:start + len(group)]) if val is not None else 0
        val_sources.append((name, count))
        start += len(group)
    train_sources, start = [], 0
    for name, n_pairs in train_groups:
        train_sources.append((name, sum(train.samples_per_pair[start:start + n_pairs])))
        start += n_pairs
    for name, samples, pairs in (("train", train, train_pairs), ("val", val, val_pairs)):
        if samples is not None and not any(samples.foreground):  # nothing to learn or select on: a wrong encoding
            raise ValueError(f"all {len(pairs)} {name} masks are empty at {res}x{res} (e.g. {pairs[0].mask}); "
                             "check the mask files and their encoding")
    return RunData(sources, train_pairs, train, val, val_sources, train_sources, time.perf_counter() - started,
                   tables[0][1])
