"""Samples on disk, read lazily: the decoded, resized uint8 images and masks of a run, and rows of frozen training
targets (mask latents, teacher tokens).

A :class:`RowFile` is a raw binary file of equal-sized rows (``NAME.bin``) with a small JSON description beside it
(``NAME.json``: dtype, row shape, row count; ``numpy.memmap`` reads it too). Rows are appended while they are
computed and read with ``os.pread`` at their offset: nothing is memory-mapped, so a process's resident memory holds
the rows it asked for, not the file (a memory map's touched pages count as the process's RSS until the kernel drops
them), and the operating system's page cache, which no process is charged for, keeps hot files fast.

A :class:`SampleStore` is two row files (images (3, R, R), masks (R, R)) and the sample names, written once per
set of files, resolution and volume options (:func:`build_sample_store`): every file is decoded at most once, and
later runs that point ``run.cache_dir`` at the same folder skip the decoding.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .io import _samples, resize_image, resize_mask


class RowFile:
    """Rows of one dtype and shape in ``path.bin``, described by ``path.json``; read with :meth:`read`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_file = self.path.with_suffix(".json")
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{meta_file}: not a leafseg row file description ({err})") from None
        self.dtype = np.dtype(meta["dtype"])
        self.row_shape = tuple(meta["row_shape"])
        self.rows = int(meta["rows"])
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        size = self.path.with_suffix(".bin").stat().st_size
        if size != self.rows * self.row_bytes:
            raise ValueError(f"{self.path.with_suffix('.bin')}: {size} bytes, expected {self.rows} rows of "
                             f"{self.row_bytes} (an interrupted write? delete the cache folder)")
        self._fd, self._pid = None, None

    def __len__(self) -> int:
        return self.rows

    def _file(self) -> int:
        # One descriptor per process: DataLoader workers are forked with the parent's, whose offset they would share.
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path.with_suffix(".bin"), os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, indices) -> np.ndarray:
        """Rows ``indices`` (any sequence of ints, or one int) as a new array (len(indices), *row_shape)."""
        single = np.ndim(indices) == 0
        indices = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        if len(indices) and (indices.min() < 0 or indices.max() >= self.rows):
            raise IndexError(f"{self.path}: row index out of range 0..{self.rows - 1}")
        out = np.empty((len(indices), *self.row_shape), self.dtype)
        flat = out.reshape(len(indices), -1).view(np.uint8)
        fd = self._file()
        for k, i in enumerate(indices):
            buffer = os.pread(fd, self.row_bytes, int(i) * self.row_bytes)
            flat[k] = np.frombuffer(buffer, np.uint8)
        return out[0] if single else out

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` in one read."""
        stop = min(stop, self.rows)
        buffer = os.pread(self._file(), (stop - start) * self.row_bytes, start * self.row_bytes)
        return np.frombuffer(buffer, self.dtype).reshape(stop - start, *self.row_shape).copy()

    def __getstate__(self):  # picklable for spawned DataLoader workers; the descriptor is reopened there
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None
        return state

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass


class RowWriter:
    """Append rows to ``path.bin``; :meth:`close` writes ``path.json``. Use as a context manager; rows go to the
    file as they come (constant memory)."""

    def __init__(self, path: str | os.PathLike, dtype, row_shape):
        self.path = Path(path)
        self.dtype, self.row_shape, self.rows = np.dtype(dtype), tuple(int(s) for s in row_shape), 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path.with_suffix(".bin"), "wb")

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: rows of shape {rows.shape[1:]}, expected {self.row_shape}")
        self._file.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> RowFile:
        self._file.close()
        self.path.with_suffix(".json").write_text(json.dumps(
            {"dtype": self.dtype.str, "row_shape": list(self.row_shape), "rows": self.rows}))
        return RowFile(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            self._file.close()
        else:
            self.close()


STORE_FORMAT = 1  # samples.json's layout; a store of another format is rebuilt


def _masks(rows: np.ndarray) -> np.ndarray:
    """Stored masks as the training reads them: bool foreground, but class indices kept where a label map holds a
    structure above 1 (a batch whose label maps hold structure 1 alone reads alike either way)."""
    return rows if rows.size and rows.max() > 1 else rows.astype(bool)


class SampleStore:
    """The samples of one split at one resolution: ``images`` (3, R, R) and ``masks`` (R, R) uint8 row files
    (masks 0/1, or class indices of label maps), ``names`` (``stem``, or ``stem/k`` for slice k of a volume), each
    mask's ``foreground`` pixel count at that resolution, and how many samples each source file gave
    (``samples_per_pair``)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.images = RowFile(self.folder / "images")
        self.masks = RowFile(self.folder / "masks")
        meta = json.loads((self.folder / "samples.json").read_text())
        if meta.get("format") != STORE_FORMAT:
            raise ValueError(f"{self.folder}: sample store of format {meta.get('format')}, this leafseg reads format "
                             f"{STORE_FORMAT}")
        self.names, self.foreground = meta["names"], meta["foreground_pixels"]
        self.samples_per_pair = meta["samples_per_pair"]
        if not len(self.images) == len(self.masks) == len(self.names):
            raise ValueError(f"{self.folder}: {len(self.images)} images, {len(self.masks)} masks and "
                             f"{len(self.names)} names (an interrupted write? delete the folder)")
        self.resolution = self.images.row_shape[-1]

    def __len__(self) -> int:
        return len(self.names)

    def read(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Images (B, 3, R, R) uint8 and masks (B, R, R) of samples ``indices``: bool, or the uint8 class indices of
        label maps."""
        return self.images.read(indices), _masks(self.masks.read(indices))

    def batches(self, size: int):
        """(images, masks) torch tensors of consecutive samples, ``size`` at a time (validation order); masks as
        :meth:`read` gives them."""
        import torch

        for start in range(0, len(self), size):
            yield (torch.from_numpy(self.images.read_range(start, start + size)),
                   torch.from_numpy(_masks(self.masks.read_range(start, start + size))))

    def bytes(self) -> int:
        return (self.images.rows * self.images.row_bytes) + (self.masks.rows * self.masks.row_bytes)


def store_key(pairs: list, resolution: int, volume_options: dict) -> str:
    """A digest of what a store holds: each pair's files (path, size, modification time: an edited file makes a new
    store), the mask rule, the resolution and how volumes become slices."""
    files = []
    for pair in pairs:
        for path in (pair.image, pair.mask):
            st = os.stat(path)
            files.append([str(Path(path).resolve()), st.st_size, st.st_mtime_ns])
        files.append(getattr(pair, "mask_rule", "binary"))
        if getattr(pair, "labels", None) is not None:  # a multi-class table (binary keys stay as they were)
            files.append(pair.labels.to_dict())
    blob = json.dumps([files, int(resolution), volume_options], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_sample_store(pairs: list, resolution: int, folder: str | os.PathLike, desc: str = "decoding",
                       intensity: dict | None = None, axis: int = 2, volume_slices: str = "all",
                       say=None) -> SampleStore:
    """Decode and resize ``pairs`` into a :class:`SampleStore` at ``folder`` (written into a temporary folder and
    renamed, so an interrupted build leaves nothing half-written), or open it when it is already there. One pair
    (one volume) is in memory at a time."""
    folder = Path(folder)
    if (folder / "samples.json").exists():
        try:
            return SampleStore(folder)
        except (ValueError, KeyError) as err:  # another leafseg version's store: decode again
            if say is not None:
                say(f"{folder}: not readable as a sample store ({err}); decoding again")
            shutil.rmtree(folder)
    if volume_slices not in ("all", "foreground"):
        raise ValueError(f"data.volume_slices must be all or foreground, got {volume_slices!r}")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    names, foreground, per_pair, started = [], [], [], time.perf_counter()
    try:
        with RowWriter(tmp / "images", np.uint8, (3, resolution, resolution)) as images, \
                RowWriter(tmp / "masks", np.uint8, (resolution, resolution)) as masks:
            for pair in tqdm(pairs, desc=desc, leave=False, disable=len(pairs) < 50):
                samples = _samples(pair, intensity, axis, volume_slices)
                per_pair.append(len(samples))
                for name, image, mask in samples:
                    small = resize_mask(mask, resolution)
                    names.append(name)
                    foreground.append(int(np.count_nonzero(small)))  # label maps: every structure
                    images.write(resize_image(image, resolution).transpose(2, 0, 1)[None])
                    masks.write(small[None].astype(np.uint8))
        if not names:
            raise ValueError(f"no samples in {len(pairs)} pair(s) (e.g. {pairs[0].image if pairs else 'none'})")
        meta = {"format": STORE_FORMAT, "names": names, "foreground_pixels": foreground, "samples_per_pair": per_pair}
        (tmp / "samples.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process made it meanwhile: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    store = SampleStore(folder)
    if say is not None:
        say(f"{desc}: {len(pairs)} file(s) -> {len(store)} samples at {resolution}x{resolution}, "
            f"{store.bytes() / 2**20:.1f} MiB on disk, {time.perf_counter() - started:.1f} s (first pass; later "
            "runs with the same cache folder read it)")
    return store
