"""Medical image formats: NIfTI (``.nii``, ``.nii.gz``, via nibabel) and DICOM (single ``.dcm`` files and series
folders, via pydicom).

A volume is read into array (X, Y, Z) in the file's voxel order with its affine (voxel -> RAS+ mm, as NIfTI
stores it) and voxel spacing. 2D models see it as slices along ``axis`` (default 2, the NIfTI "slice" axis);
intensities become 8-bit by one of three rules fixed per volume (so every slice of a volume is scaled alike):
``minmax``, ``percentile`` (clip to the [low, high] percentiles, the default: robust to outliers) or ``window``
(a CT window: center and width in the file's units, e.g. Hounsfield). Predicted slices are stacked back and written
as NIfTI with the input's affine (and header, for NIfTI input), so the mask opens in ITK-SNAP or 3D Slicer where it
belongs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".dcm")
INTENSITY_MODES = ("percentile", "minmax", "window")
DEFAULT_INTENSITY = {"mode": "percentile", "percentiles": [0.5, 99.5], "window": [40.0, 400.0]}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_volume(path: str | Path) -> bool:
    """A NIfTI or DICOM file, or a folder holding a DICOM series."""
    path = Path(path)
    if path.is_dir():
        return any(p.suffix.lower() == ".dcm" for p in path.iterdir())
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def volume_stem(path: str | Path) -> str:
    """``case.nii.gz`` -> ``case`` (Path.stem would give ``case.nii``)."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def slices_along(array: np.ndarray, axis: int) -> list[np.ndarray]:
    """The 2-D slices of ``array`` along ``axis``, each its own contiguous copy. Basic indexing, not ``np.take``:
    take copies the whole (Fortran-ordered, as NIfTI arrays are) volume into C order for every slice, which made
    reading a 100-slice volume ~100x slower."""
    moved = np.moveaxis(array, axis, 0)
    return [np.ascontiguousarray(moved[k]) for k in range(moved.shape[0])]


@dataclass
class Volume:
    array: np.ndarray                 # (X, Y, Z), the file's values (rescaled to real units for DICOM)
    affine: np.ndarray                # voxel index -> RAS+ millimetres
    source: Path
    header: Any = None                # the NIfTI header, kept for writing masks back
    spacing: tuple[float, ...] = field(default=(1.0, 1.0, 1.0))

    def slices(self, axis: int = 2) -> list[np.ndarray]:
        return slices_along(self.array, axis)

    def slice_spacing(self, axis: int = 2) -> tuple[float, float]:
        """In-plane spacing (rows, columns) of the slices along ``axis``."""
        rest = [s for i, s in enumerate(self.spacing) if i != axis]
        return float(rest[0]), float(rest[1])


def read_volume(path: str | Path) -> Volume:
    """A NIfTI file, a DICOM file or a DICOM series folder; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        if path.is_dir() or path.suffix.lower() == ".dcm":
            return _read_dicom(path)
        return _read_nifti(path)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as err:  # nibabel / pydicom raise their own types for corrupt files
        kind = "DICOM" if path.is_dir() or path.suffix.lower() == ".dcm" else "NIfTI"
        raise ValueError(f"{path}: cannot read it as {kind} ({type(err).__name__}: {err})") from None


def volume_depth(path: str | Path) -> int:
    """The number of slices along axis 2 that :func:`read_volume` would give, from the NIfTI header or the count of
    a series' files, without reading any voxel (so a predict over a folder does not read each volume twice)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.suffix.lower() == ".dcm" for p in path.iterdir())
    if path.suffix.lower() == ".dcm":
        return 1
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception as err:  # nibabel raises its own types for corrupt files
        raise ValueError(f"{path}: cannot read it as NIfTI ({type(err).__name__}: {err})") from None
    return 1 if len(shape) == 2 else (shape[2] if len(shape) >= 3 else 0)


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    image = nib.load(str(path))
    array = np.asanyarray(image.dataobj)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 2D or 3D image, got shape {array.shape}")
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3]) + (1.0,) * (3 - len(image.header.get_zooms()[:3]))
    return Volume(array, np.asarray(image.affine, float), path, image.header, zooms)


def _read_dicom(path: Path) -> Volume:
    import pydicom

    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".dcm") if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path}: no .dcm files in this folder")
    datasets = [pydicom.dcmread(str(f)) for f in files]
    series = sorted({str(getattr(d, "SeriesInstanceUID", "")) for d in datasets})
    if len(series) > 1:  # stacking them would make one wrong volume
        raise ValueError(f"{path}: the folder holds {len(series)} DICOM series (SeriesInstanceUID "
                         f"{', '.join(s or '(none)' for s in series[:3])}{', ...' if len(series) > 3 else ''}); put "
                         "each series in its own folder")
    normal = None
    if all(hasattr(d, "ImageOrientationPatient") and hasattr(d, "ImagePositionPatient") for d in datasets):
        row, col = (np.asarray(datasets[0].ImageOrientationPatient[i:i + 3], float) for i in (0, 3))
        normal = np.cross(row, col)
        datasets.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    else:
        datasets.sort(key=lambda d: int(getattr(d, "InstanceNumber", 0)))
    slices = []
    for d in datasets:
        pixels = d.pixel_array.astype(np.float32)
        slices.append(pixels * float(getattr(d, "RescaleSlope", 1.0)) + float(getattr(d, "RescaleIntercept", 0.0)))
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise ValueError(f"{path}: the series mixes slice sizes {sorted(shapes)}")
    # DICOM pixel (row r, column c) -> array (x = c, y = r), as NIfTI converters lay it out
    array = np.stack([s.T for s in slices], axis=-1)
    dr, dc = (float(v) for v in getattr(datasets[0], "PixelSpacing", [1.0, 1.0]))
    dz = float(getattr(datasets[0], "SliceThickness", 1.0) or 1.0)
    affine = np.eye(4)
    if normal is not None:
        positions = [np.asarray(d.ImagePositionPatient, float) for d in datasets]
        if len(positions) > 1:
            gaps = np.diff([float(np.dot(normal, q)) for q in positions])
            same = np.flatnonzero(np.abs(gaps) < 1e-6)
            if len(same):  # two files at one position: a slice exported twice, or two series in one folder
                at = int(same[0])
                names = [Path(getattr(datasets[k], "filename", "") or f"slice {k + 1}").name for k in (at, at + 1)]
                raise ValueError(f"{path}: {names[0]} and {names[1]} lie at the same position (a duplicated slice, "
                                 "or two series in one folder?); keep one file per position")
            dz = float(np.linalg.norm(positions[1] - positions[0])) or dz
            if np.abs(gaps - gaps[0]).max() > 0.01 * max(abs(gaps[0]), 1e-6) + 1e-3:
                at = int(np.argmax(np.abs(gaps - gaps[0])))
                raise ValueError(f"{path}: slices are not evenly spaced ({gaps[0]:g} mm, but {gaps[at]:g} mm between "
                                 f"slices {at + 1} and {at + 2}: a missing slice?); a volume needs one spacing "
                                 "(complete the series or resample it)")
        affine[:3, 0], affine[:3, 1], affine[:3, 2] = row * dc, col * dr, normal * dz
        affine[:3, 3] = positions[0]
        affine = _LPS_TO_RAS @ affine
    else:
        affine = np.diag([dc, dr, dz, 1.0])
    return Volume(array, affine, path, None, (dc, dr, dz))


def to_uint8(array: np.ndarray, intensity: dict | None = None) -> np.ndarray:
    """Intensities -> uint8 by ``intensity["mode"]`` (see the module docstring); one rule for the whole array.
    Non-finite voxels (NaN, inf: e.g. outside a scanner's field of view) are left out of the range and become 0; an
    array without a finite value is an error."""
    spec = {**DEFAULT_INTENSITY, **(intensity or {})}
    mode = spec["mode"]
    a = array.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        if not finite.any():
            raise ValueError("no finite intensity (every voxel is NaN or infinite)")
        a = np.where(finite, a, np.nan)
    if mode == "percentile":
        lo, hi = np.nanpercentile(a, [float(p) for p in spec["percentiles"]])
    elif mode == "minmax":
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    elif mode == "window":
        center, width = (float(v) for v in spec["window"])
        lo, hi = center - width / 2, center + width / 2
    else:
        raise ValueError(f"unknown intensity mode {mode!r}; expected one of {INTENSITY_MODES}")
    if hi <= lo:
        return np.zeros(array.shape, np.uint8)
    scaled = np.clip((a - lo) / (hi - lo), 0, 1) * 255
    return np.nan_to_num(scaled, nan=0.0).round().astype(np.uint8)


def write_mask_volume(mask: np.ndarray, like: Volume, path: str | Path) -> Path:
    """A (X, Y, Z) mask as NIfTI (uint8: 1 = foreground, or a label map's values) with ``like``'s affine and, for
    NIfTI input, its header."""
    import nibabel as nib

    data = mask.astype(np.uint8)
    if like.header is not None:
        header = like.header.copy()
        header.set_data_dtype(np.uint8)
        header.set_data_shape(data.shape)
        image = nib.Nifti1Image(data, like.affine, header)
        image.header.set_slope_inter(1, 0)
    else:
        image = nib.Nifti1Image(data, like.affine)
    image.header["descrip"] = b"leafseg mask"
    return atomic_write(path, lambda tmp: nib.save(image, str(tmp)))
