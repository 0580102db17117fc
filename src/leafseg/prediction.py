"""``leafseg predict``: segment an image file or a folder of images with a saved model, writing masks and overlays."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import data as D
from .figures import legend, overlay, overlay_labels, save_png
from .files import atomic_write, prepare_output, write_csv


def input_files(source: str | Path) -> list[Path]:
    """One image file (2D, NIfTI or DICOM) or DICOM series folder, or the images and volumes of a folder in natural
    stem order."""
    path = Path(source)
    if path.is_file() or (path.is_dir() and D.is_volume(path)):
        return [path]
    if path.is_dir():
        files = sorted(D.list_images(path), key=lambda p: D.sort_key(D.file_stem(p)))
        if not files:
            raise ValueError(f"{path}: no images ({', '.join(D.IMAGE_EXTENSIONS)})")
        return files
    raise FileNotFoundError(f"{path}: no such file or folder")


#: the longest name predict appends to an output stem; a stem is cut so every output name fits in 255 bytes
LONGEST_SUFFIX = max(len(x) for x in ("_mask.png", "_overlay.png", "_uncertainty.png", "_probability.npy",
                                       "_mask.nii.gz"))
NAME_BYTES = 255


def _fit(name: str, tail: str = "") -> str:
    """``name + tail``, ``name`` cut (on a character boundary) so that the longest output name fits in 255 bytes."""
    room = NAME_BYTES - LONGEST_SUFFIX - len(tail.encode())
    return name.encode()[:room].decode(errors="ignore") + tail


def output_names(files: list[Path]) -> dict[Path, str]:
    """The name stem of each input's outputs, decided from all inputs first: an input whose stem no other input
    shares (case-insensitively: ``x.png`` and ``x.PNG`` meet on macOS and Windows disks) keeps it; inputs that share
    a stem get stem + extension (``1.png`` and ``1.jpg`` -> ``1_png``, ``1_jpg``), then a counter, never a name
    another input keeps (``x_png.png`` keeps ``x_png``; ``x.png`` beside ``x.PNG`` becomes ``x_png_2``). Stems are
    cut so that every output name fits in 255 bytes. No output overwrites another or holds another input's name."""
    stems = [D.file_stem(f) for f in files]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s.casefold()] = counts.get(s.casefold(), 0) + 1
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for f, s in zip(files, stems):  # first, the inputs that keep their own stem
        if counts[s.casefold()] == 1 and _fit(s).casefold() not in taken:
            names[f] = _fit(s)
            taken.add(names[f].casefold())
    for f, s in zip(files, stems):
        if f in names:
            continue
        extension = f.name[len(s):].lstrip(".").replace(".", "_").lower() or "dir"
        base = f"{s}_{extension}" if counts[s.casefold()] > 1 else s
        candidate, k = _fit(base), 2
        while candidate.casefold() in taken:
            candidate, k = _fit(base, f"_{k}"), k + 1
        taken.add(candidate.casefold())
        names[f] = candidate
    return names


def write_names(names: dict[Path, str], out: Path) -> list[tuple[Path, str]]:
    """``names.csv`` (input, output stem) in the output folder; returns the inputs whose stem changed."""
    write_csv([{"input": str(f), "output": n} for f, n in names.items()], out / "names.csv")
    return [(f, n) for f, n in names.items() if n != D.file_stem(f)]


@dataclass
class PredictReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)
    renamed: list[tuple[Path, str]] = field(default_factory=list)  # (file, output stem) where not the file's stem
    left_out: list[tuple[Path, str]] = field(default_factory=list)  # folder entries not read as inputs, and why


def predict(model: str | Path, source: str | Path, output: str | Path, steps: int = 1, ensemble: int = 1,
            seed: int = 0, batch_size: int = 8, device: str | None = None, uncertainty: bool = False,
            threshold: float = 0.5, save_probabilities: bool = False, strict: bool = False,
            overwrite: bool = False, backend: str = "auto", precision: str = "fp32",
            flip_tta: bool = False, frame_decision: bool = True, compile: bool = False) -> PredictReport:
    """Write ``<name>_mask.png`` (0/255) and ``<name>_overlay.png`` for every readable input image (a NIfTI/DICOM
    volume: ``<name>_mask.nii.gz`` in the input's space, see :func:`_predict_volume`); with
    ``uncertainty`` (an ensemble) ``<name>_uncertainty.png`` (per-pixel std scaled from [0, 0.5] to [0, 255]); with
    ``save_probabilities`` ``<name>_probability.npy`` (float32, the soft mask at the image's size). An unreadable
    file is skipped and reported (``strict``: the first one stops the run). ``precision``: see
    :func:`leafseg.pipelines.load_pipeline`.

    Args:
        model: a saved or exported model folder.
        source: an image, a NIfTI/DICOM volume or series folder, or a folder of them.
        output: the folder to write into (created; a non-empty one is refused unless ``overwrite``).
        steps, ensemble, seed, threshold, flip_tta, frame_decision: the pipeline call's options (see
            ``LeafSegPipeline.__call__``).
        batch_size: images per forward pass. device, backend, precision, compile: see :func:`load_pipeline`.
        uncertainty: write the ensemble's uncertainty maps (needs ``ensemble >= 2``).
        save_probabilities: also write the soft masks as ``.npy``.
        strict: stop at the first unreadable file instead of skipping it.
        overwrite: empty a non-empty output folder first.

    Returns:
        A ``PredictReport``: the files written, the files skipped with the reason, the entries of an input folder
        not read as inputs with the reason, and the inputs whose outputs carry another name than their stem (all
        names are in ``OUTPUT/names.csv``).
    """

    from .pipelines import load_pipeline
    from .pipelines.image_processor import check_threshold

    check_threshold(threshold)
    if uncertainty and ensemble < 2:
        raise ValueError("--uncertainty needs an ensemble: pass --ensemble N with N >= 2 (e.g. 5)")
    pipe = load_pipeline(model, device, backend, precision, compile)
    files = input_files(source)
    out = prepare_output(output, overwrite, inputs=[source, model])
    names, report = output_names(files), PredictReport()
    report.renamed = write_names(names, out)
    report.left_out = D.left_out(source) if Path(source).is_dir() and not D.is_volume(Path(source)) else []
    options = {"num_inference_steps": steps, "ensemble_size": ensemble, "seed": seed, "threshold": threshold,
               "flip_tta": flip_tta, "frame_decision": frame_decision}
    total = len(files)
    try:
        _predict_files(pipe, files, out, names, report, options, batch_size, uncertainty, save_probabilities, strict)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI turns it into this): what is written stays whole
        raise Interrupted(f"{len(report.written)} of {total} input(s) written to {out}") from None
    return report


class Interrupted(KeyboardInterrupt):
    """Work stopped by the user or a signal; the message says how much was done."""


def _predict_files(pipe, files: list[Path], out: Path, names: dict[Path, str], report: PredictReport, options: dict,
                   batch_size: int, uncertainty: bool, save_probabilities: bool, strict: bool) -> None:
    from tqdm.auto import tqdm

    volumes = [f for f in files if D.is_volume(f) and not _is_2d_volume(f)]
    for f in volumes:
        try:
            _predict_volume(pipe, f, out, names[f], batch_size, options, save_probabilities)
            report.written.append(f)
        except (ValueError, OSError) as err:
            if strict:
                raise
            report.skipped.append((f, str(err)))
    files = [f for f in files if f not in volumes]
    with tqdm(total=len(files), desc="predicting", unit="img", disable=len(files) < 2) as bar:
        for i in range(0, len(files), batch_size):
            chunk, images = [], []
            for f in files[i:i + batch_size]:
                try:
                    images.append(D.load_image(f, pipe.config.get("intensity")))
                    chunk.append(f)
                except (ValueError, OSError) as err:
                    if strict:
                        raise
                    report.skipped.append((f, str(err)))
            if chunk:
                result = pipe(images, **options)
                for k, (f, image, mask) in enumerate(zip(chunk, images, result.masks)):
                    _write(out, names[f], image, mask, result, k, uncertainty, save_probabilities,
                           getattr(pipe, "label_table", None))
                    report.written.append(f)
            bar.update(len(files[i:i + batch_size]))


def mask_file_array(mask: np.ndarray, labels=None) -> np.ndarray:
    """What a written 2D mask holds: 0/255 for one structure; for a label map (class indices) the label table's
    values, as the training masks were written."""
    return labels.values_of(mask) if labels is not None else mask.astype(np.uint8) * 255


def overlay_file_array(image: np.ndarray, mask: np.ndarray, labels=None) -> np.ndarray:
    """The overlay a prediction writes: the mask tinted on the image; label maps a colour per structure, over a
    legend naming them."""
    if labels is None:
        return overlay(image, mask)
    drawn = overlay_labels(image, mask)
    return np.concatenate([drawn, legend(drawn.shape[1], labels.foreground, max(12, drawn.shape[1] // 55))])


def _write(out: Path, name: str, image: np.ndarray, mask: np.ndarray, result, k: int, uncertainty: bool,
           save_probabilities: bool, labels=None) -> None:
    """One input's output files, all or none: a failure or an interruption half-way removes those already
    written (a mask without its overlay would pass for a finished one). ``labels``: the model's label table (a
    label map is written with its values and drawn with a legend)."""
    written: list[Path] = []

    def keep(path: Path) -> Path:
        written.append(path)
        return path

    try:
        save_png(mask_file_array(mask, labels), keep(out / f"{name}_mask.png"))
        save_png(overlay_file_array(image, mask, labels), keep(out / f"{name}_overlay.png"))
        if uncertainty and result.uncertainty is not None:
            std = result.uncertainty[k]  # std of values in [0, 1]: at most 0.5
            save_png((np.clip(std / 0.5, 0, 1) * 255).astype(np.uint8), keep(out / f"{name}_uncertainty.png"))
        if save_probabilities:
            path = keep(out / f"{name}_probability.npy")
            atomic_write(path, lambda tmp: np.save(tmp, result.probabilities[k].astype(np.float32)))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _is_2d_volume(path: Path) -> bool:
    try:
        return D.volume_depth(path) == 1
    except (ValueError, OSError):
        return False  # unreadable: reported when it is read as a volume


@dataclass
class Segmentation:
    """One input file segmented plane by plane: ``images``, the 8-bit RGB planes the model saw (one for a 2D image,
    one per slice along ``axis`` for a volume), and per plane the mask, the probability and (ensembles) the
    uncertainty at the plane's size. ``volume`` is the NIfTI/DICOM volume the planes came from (None for a 2D
    image), whose space the written mask keeps."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    probabilities: list[np.ndarray]
    uncertainty: list[np.ndarray] | None
    volume: D.Volume | None = None
    axis: int = 2
    cleared: list[bool] | None = None  # planes the model's frame decision emptied
    labels: D.LabelTable | None = None  # a multi-class model's label table: the masks are label maps

    def write_mask(self, stem: Path) -> Path:
        """``<stem>.png`` (0/255; label maps: the table's values) for a 2D image, ``<stem>.nii.gz`` (0/1; label
        maps: the table's values; the input's affine and header) for a volume; the path written."""
        if self.volume is None:
            path = stem.with_name(stem.name + ".png")
            save_png(mask_file_array(self.masks[0], self.labels), path)
            return path
        planes = [self.labels.values_of(m) for m in self.masks] if self.labels is not None else self.masks
        return D.write_mask_volume(np.stack(planes, axis=self.axis), self.volume,
                                   stem.with_name(stem.name + ".nii.gz"))


def segment_file(pipe, path: str | Path, options: dict, batch_size: int = 8) -> Segmentation:
    """Segment one input as ``leafseg predict`` does: a 2D image (PNG/JPG, a one-slice NIfTI or a DICOM file), or a
    NIfTI/DICOM volume (a file or a series folder) slice by slice, scaled to 8 bit as in training.

    Args:
        pipe: a loaded pipeline (:func:`leafseg.load_pipeline`).
        path: the input file or DICOM series folder.
        options: the pipeline's call options (``num_inference_steps``, ``ensemble_size``, ``seed``,
            ``threshold``).
        batch_size: slices per forward pass.

    Returns:
        A :class:`Segmentation`: the planes, masks, probabilities and uncertainty, and the volume for its space.

    Raises:
        ValueError, OSError: unreadable input (the message names the file).
    """
    from tqdm.auto import tqdm

    path = Path(path)
    volume = D.read_volume(path) if D.is_volume(path) else None
    if volume is None or volume.array.shape[2] == 1:  # a one-slice volume is a 2D image
        image = D.load_image(path, pipe.config.get("intensity"))
        result = pipe([image], **options)
        return Segmentation([image], result.masks, result.probabilities, result.uncertainty,
                            cleared=result.cleared, labels=getattr(pipe, "label_table", None))
    axis = int(pipe.config.get("slice_axis", 2))
    scaled = D.to_uint8(volume.array, pipe.config.get("intensity"))
    slices = [np.repeat(plane[..., None], 3, axis=-1) for plane in D.slices_along(scaled, axis)]
    masks, probabilities, uncertainty, cleared = [], [], [], []
    for i in tqdm(range(0, len(slices), batch_size), desc=f"{path.name}", unit="batch", leave=False):
        result = pipe(slices[i:i + batch_size], **options)
        masks += result.masks
        probabilities += result.probabilities
        uncertainty += result.uncertainty or []
        cleared += result.cleared or [False] * len(result.masks)
    return Segmentation(slices, masks, probabilities, uncertainty or None, volume, axis, cleared,
                        getattr(pipe, "label_table", None))


def _predict_volume(pipe, path: Path, out: Path, name: str, batch_size: int, options: dict,
                    save_probabilities: bool) -> None:
    """Segment a NIfTI/DICOM volume slice by slice and write ``<name>_mask.nii.gz`` with the input's affine (and
    NIfTI header), ``<name>_overlay.png`` of the slice with the largest predicted area, and with
    ``save_probabilities`` ``<name>_probability.npy`` (X, Y, Z)."""
    seg = segment_file(pipe, path, options, batch_size)
    seg.write_mask(out / f"{name}_mask")
    k = int(np.argmax([np.count_nonzero(m) for m in seg.masks]))
    save_png(overlay_file_array(seg.images[k], seg.masks[k], seg.labels), out / f"{name}_overlay.png")
    if save_probabilities:
        np.save(out / f"{name}_probability.npy", np.stack(seg.probabilities, axis=seg.axis).astype(np.float32))
