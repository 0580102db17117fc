"""NIfTI and DICOM: volumes read with their geometry, trained and evaluated slice by slice, split by volume, and
predicted back into a volume in the input's space (issue 12). Small volumes made by the tests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from leafseg import data as D
from leafseg.cli import main
from tiny import tiny_config, tiny_pipeline

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

AFFINE = np.array([[0.0, -0.8, 0.0, 40.0], [0.8, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 7.0], [0, 0, 0, 1]])


def _volume(seed: int, shape=(24, 20, 7)) -> tuple[np.ndarray, np.ndarray]:
    """CT-like intensities (HU) with a bright ellipsoid, and its mask."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    blob = ((x - 12 + seed) / 6) ** 2 + ((y - 10) / 5) ** 2 + ((z - 3) / 2.2) ** 2 < 1  # slices 0, 6 empty
    image = rng.normal(-100, 30, shape) + 300 * blob
    return image.astype(np.int16), blob.astype(np.uint8)


def _nifti_dataset(root, n=4):
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, mask = _volume(i)
        nib.save(nib.Nifti1Image(image, AFFINE), str(root / "images" / f"case{i}.nii.gz"))
        nib.save(nib.Nifti1Image(mask, AFFINE), str(root / "masks" / f"case{i}.nii.gz"))
    return root


def test_nifti_geometry_and_intensity_rules(tmp_path):
    root = _nifti_dataset(tmp_path / "d", n=1)
    v = D.read_volume(root / "images" / "case0.nii.gz")
    assert v.array.shape == (24, 20, 7) and np.allclose(v.affine, AFFINE) and np.allclose(v.spacing, (0.8, 0.8, 2.5))
    assert D.volume_depth(root / "images" / "case0.nii.gz") == 7  # from the header alone
    nib.save(nib.Nifti1Image(np.zeros((5, 6), np.float32), AFFINE), str(tmp_path / "flat.nii.gz"))
    assert D.volume_depth(tmp_path / "flat.nii.gz") == D.read_volume(tmp_path / "flat.nii.gz").array.shape[2] == 1
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="broken.nii.gz"):
        D.volume_depth(tmp_path / "broken.nii.gz")
    assert D.file_stem(root / "images" / "case0.nii.gz") == "case0"
    a = np.array([[-1000.0, 40.0, 240.0, 3000.0]])
    assert D.to_uint8(a, {"mode": "window", "window": [40, 400]}).tolist() == [[0, 128, 255, 255]]
    assert D.to_uint8(a, {"mode": "minmax"}).tolist() == [[0, 66, 79, 255]]
    assert D.to_uint8(a, {"mode": "percentile", "percentiles": [0, 100]}).tolist() == [[0, 66, 79, 255]]
    with pytest.raises(ValueError, match="intensity mode"):
        D.to_uint8(a, {"mode": "gamma"})
    # NaN voxels (outside a field of view) are left out of the range and become 0, instead of turning it to NaN
    holes = np.array([[-1000.0, np.nan, 240.0, 3000.0, np.inf]])
    for mode in ("minmax", "percentile"):
        spec = {"mode": mode, "percentiles": [0, 100]}
        assert D.to_uint8(holes, spec).tolist() == [[0, 0, 79, 255, 0]]
    with pytest.raises(ValueError, match="no finite intensity"):
        D.to_uint8(np.full((2, 2), np.nan))


def test_volumes_are_split_by_volume_and_loaded_as_slices(tmp_path):
    root = _nifti_dataset(tmp_path / "d")
    pairs = D.find_dataset(root)
    assert [p.stem for p in pairs] == ["case0", "case1", "case2", "case3"]
    split = D.make_split([p.stem for p in pairs], 0.5, 0.25, 0.25)
    assert all("/" not in s for k in ("train", "val", "test") for s in split[k])  # volumes, never slices
    images, masks, names = D.load_samples(pairs[:2], 32)
    assert images.shape == (14, 3, 32, 32) and names[:2] == ["case0/0", "case0/1"]
    _, fg_masks, fg_names = D.load_samples(pairs[:2], 32, volume_slices="foreground")
    assert len(fg_names) < 14 and all(m.any() for m in fg_masks)


def test_train_evaluate_predict_on_nifti_volumes(tmp_path):
    from leafseg.evaluation import evaluate
    from leafseg.training import train

    root = _nifti_dataset(tmp_path / "d")
    cfg = tiny_config(tmp_path / "run", root, "train.max_steps=2", "data.intensity.mode=window",
                      "data.intensity.window=[40,400]")
    train(cfg)
    model = tmp_path / "run" / "model-best"
    sources = json.loads((tmp_path / "run" / "sources.json").read_text())
    assert [(s["root"], s["split_file"]) for s in sources] == [(str(root.resolve()),
                                                                str((tmp_path / "run" / "split.json").resolve()))]
    with pytest.raises(ValueError, match="trained on this dataset"):
        evaluate(str(model), str(root), "all", None, str(tmp_path / "ev"))
    ev = evaluate(str(model), str(root), "all", None, str(tmp_path / "ev"), allow_training_data=True)
    s = ev["summary"]
    assert s["n_images"] == 28 and s["volumes"]["n_images"] == 4  # 4 volumes x 7 slices; 4 volume rows
    assert (tmp_path / "ev" / "per_volume.csv").exists() and (tmp_path / "ev" / "report.md").exists()
    code = main(["predict", "--model", str(model), "--input", str(root / "images" / "case1.nii.gz"),
                 "--output", str(tmp_path / "pred")])
    assert code == 0
    out = nib.load(str(tmp_path / "pred" / "case1_mask.nii.gz"))
    assert out.shape == (24, 20, 7) and np.allclose(out.affine, AFFINE) and out.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1}
    assert (tmp_path / "pred" / "case1_overlay.png").exists()


def _dicom_series(folder, image: np.ndarray, spacing=(0.7, 0.6), dz=3.0):
    """One slice per file, axial (orientation [1,0,0,0,1,0]), positions along z, in scrambled file order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series = generate_uid()
    for k in range(image.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Modality, ds.InstanceNumber = "CT", k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-10.0, -20.0, 5.0 + dz * k]
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = image.shape[1], image.shape[0]  # pixel (r, c) = array (x = c, y = r)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = np.ascontiguousarray(image[:, :, k].T).astype(np.int16).tobytes()
        ds.save_as(str(folder / f"slice{(k * 3) % image.shape[2]:03d}.dcm"), enforce_file_format=True)


def test_dicom_series_geometry_and_prediction(tmp_path):
    image, _ = _volume(0)
    _dicom_series(tmp_path / "series", image)
    v = D.read_volume(tmp_path / "series")
    assert D.volume_depth(tmp_path / "series") == 7  # from the file count, before any pixel is read
    assert D.volume_depth(next((tmp_path / "series").iterdir())) == 1
    assert v.array.shape == (24, 20, 7) and np.allclose(v.array, image)  # slices sorted by position, not name
    assert np.allclose(v.spacing, (0.6, 0.7, 3.0))
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.array([[0.6, 0, 0, -10.0], [0, 0.7, 0, -20.0], [0, 0, 3.0, 5.0],
                                                           [0, 0, 0, 1]])  # LPS -> RAS
    assert np.allclose(v.affine, expected)
    tiny_pipeline().save_pretrained(tmp_path / "model")
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "series"),
                 "--output", str(tmp_path / "pred")]) == 0
    out = nib.load(str(tmp_path / "pred" / "series_mask.nii.gz"))
    assert out.shape == (24, 20, 7) and np.allclose(out.affine, expected)


def test_a_dicom_series_with_a_gap_or_two_series_in_one_folder_is_refused(tmp_path):
    """Both used to be read silently wrong: a missing slice gave a uniform spacing (3 mm off after the gap), two
    series in one folder were stacked into one volume."""
    image, _ = _volume(0)
    _dicom_series(tmp_path / "gap", image)
    files = sorted((tmp_path / "gap").iterdir())
    positions = {f: float(pydicom.dcmread(str(f)).ImagePositionPatient[2]) for f in files}
    middle = sorted(files, key=positions.get)[3]
    middle.unlink()
    with pytest.raises(ValueError, match=r"gap: slices are not evenly spaced \(3 mm, but 6 mm .*missing slice"):
        D.read_volume(tmp_path / "gap")
    import shutil  # a slice exported twice was once called "a missing slice?"

    _dicom_series(tmp_path / "dup", image)
    first = sorted((tmp_path / "dup").iterdir())[0]
    shutil.copy(first, first.with_name("copy-of-" + first.name))
    with pytest.raises(ValueError, match=r"dup: .*\.dcm and .*\.dcm lie at the same position \(a duplicated slice"):
        D.read_volume(tmp_path / "dup")
    _dicom_series(tmp_path / "two" / "a", image)
    _dicom_series(tmp_path / "two" / "b", image)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for k, f in enumerate(sorted((tmp_path / "two").rglob("*.dcm"))):
        f.rename(mixed / f"{k:03d}.dcm")
    with pytest.raises(ValueError, match="mixed: the folder holds 2 DICOM series"):
        D.read_volume(mixed)


def test_unreadable_and_unsupported_inputs_say_what_is_readable(tmp_path):
    (tmp_path / "x.nii.gz").write_bytes(b"not nifti")
    with pytest.raises(ValueError, match=r"x\.nii\.gz: cannot read it as NIfTI"):
        D.read_volume(tmp_path / "x.nii.gz")
    (tmp_path / "y.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"readable formats: .*\.nii\.gz"):
        D.load_image(tmp_path / "y.png")
