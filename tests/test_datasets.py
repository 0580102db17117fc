"""Dataset adapters on small on-disk fixtures that mimic each downloaded layout, and their split rules."""

import json

import numpy as np
import pytest
from PIL import Image

from leafseg import data as D
from leafseg.cli import main
from leafseg.data import find_dataset, make_dataset_split, split_digest
from leafseg.data import load_or_create_split as load_or_create_dataset_split


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def rgb(seed=0, shape=(12, 16)):
    return (np.random.default_rng(seed).random((*shape, 3)) * 255).astype(np.uint8)


def square_mask(shape=(12, 16), value=255):
    m = np.zeros(shape, np.uint8)
    m[3:7, 4:9] = value
    return m


def test_cvc_original_and_ground_truth_tif(tmp_path):
    for i in (1, 2, 10):
        save(tmp_path / "Original" / f"{i}.tif", rgb(i))
        save(tmp_path / "Ground Truth" / f"{i}.tif", square_mask())
    pairs = find_dataset(tmp_path, "cvc-clinicdb")
    assert [p.stem for p in pairs] == ["1", "2", "10"]
    assert pairs[0].image.parent.name == "Original" and pairs[0].mask.parent.name == "Ground Truth"
    assert D.load_mask(pairs[0].mask, pairs[0].mask_rule).sum() == 20


def test_cvc_generic_images_masks(tmp_path):
    for i in (3, 1):
        save(tmp_path / "images" / f"{i}.png", rgb(i))
        save(tmp_path / "masks" / f"{i}.png", square_mask())
    assert [p.stem for p in find_dataset(tmp_path, "cvc-clinicdb")] == ["1", "3"]


def test_kvasir_jpg_and_its_fractions(tmp_path):
    root = tmp_path / "Kvasir-SEG"
    for i in range(20):
        save(root / "images" / f"cju{i:03d}.jpg", rgb(i))
        save(root / "masks" / f"cju{i:03d}.jpg", square_mask())
    pairs = find_dataset(tmp_path, "kvasir-seg")  # the zip's top folder is found
    assert len(pairs) == 20
    # JPEG blurs the mask edges; binarising at > 127 still recovers the square
    assert abs(int(D.load_mask(pairs[0].mask).sum()) - 20) <= 4
    split = make_dataset_split(pairs, layout="kvasir-seg")
    assert [len(split[k]) for k in D.SPLITS] == [16, 2, 2]  # SDSeg's 800/100/100 proportions


def test_isic_segmentation_suffix_anywhere_below_root(tmp_path):
    ids = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000003"]
    for i, stem in enumerate(ids):
        save(tmp_path / "ISIC2018_Task1-2_Training_Input" / f"{stem}.jpg", rgb(i))
        save(tmp_path / "ISIC2018_Task1_Training_GroundTruth" / f"{stem}_segmentation.png", square_mask())
    (tmp_path / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("x")
    pairs = find_dataset(tmp_path, "isic2018")
    assert [p.stem for p in pairs] == ids
    assert all(p.mask.name == f"{p.stem}_segmentation.png" for p in pairs)
    (tmp_path / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000009.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="ISIC_0000009"):
        find_dataset(tmp_path, "isic2018")


def qata(tmp_path, n_train=10, n_test=4):
    for folder, n, prefix in (("Train Set", n_train, "tr"), ("Test Set", n_test, "te")):
        for i in range(n):
            save(tmp_path / folder / "Images" / f"{prefix}_{i}.png", rgb(i)[..., 0])  # greyscale X-rays
            save(tmp_path / folder / "Ground-truths" / f"mask_{prefix}_{i}.png", square_mask())
    return tmp_path


def test_qata_mask_prefix_and_official_test(tmp_path):
    pairs = find_dataset(qata(tmp_path), "qata-cov19")
    assert len(pairs) == 14
    assert {p.subset for p in pairs} == {"train", "test"}
    assert all(p.mask.name == f"mask_{p.image.name}" for p in pairs)
    assert D.load_image(pairs[0].image).shape == (12, 16, 3)
    split = make_dataset_split(pairs, layout="qata-cov19", seed=1)
    assert split["test"] == [f"te_{i}" for i in range(4)]  # the dataset's own test folder, untouched
    assert len(split["val"]) == round(10 * 0.1 / 0.8) and not set(split["val"]) & set(split["train"])
    assert sorted(split["train"] + split["val"]) == sorted(f"tr_{i}" for i in range(10))
    assert make_dataset_split(pairs, layout="qata-cov19", seed=1) == split  # deterministic


def test_refuge_cup_from_grey_levels_and_binary(tmp_path):
    grey = np.full((12, 16), 255, np.uint8)  # REFUGE: 255 background, 128 rim, 0 cup
    grey[2:10, 3:13] = 128
    grey[4:8, 6:10] = 0
    for subset, n in (("train", 6), ("test", 3)):
        for i in range(n):
            save(tmp_path / subset / "images" / f"{subset}{i}.png", rgb(i))
            save(tmp_path / subset / "masks" / f"{subset}{i}.png", grey if i % 2 == 0 else square_mask())
    pairs = find_dataset(tmp_path, "refuge2")
    assert {p.mask_rule for p in pairs} == {"refuge_cup"}
    by_stem = {p.stem: p for p in pairs}
    cup = D.load_mask(by_stem["train0"].mask, "refuge_cup")
    assert cup.sum() == 16 and cup[4:8, 6:10].all()  # the cup, not the disc
    assert D.load_mask(by_stem["train1"].mask, "refuge_cup").sum() == 20  # binary cup masks read as binary
    split = make_dataset_split(pairs, layout="refuge2")
    assert split["test"] == ["test0", "test1", "test2"] and len(split["val"]) == 1


def test_unknown_layout_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="unknown data layout"):
        find_dataset(tmp_path, "nope")
    with pytest.raises(FileNotFoundError, match="missing"):
        find_dataset(tmp_path / "missing", "folder")
    with pytest.raises(FileNotFoundError, match="QaTa"):
        find_dataset(tmp_path, "qata-cov19")


def test_split_file_is_reused_and_hashed(tmp_path):
    for i in range(10):
        save(tmp_path / "data" / "images" / f"{i}.png", rgb(i))
        save(tmp_path / "data" / "masks" / f"{i}.png", square_mask())
    pairs = find_dataset(tmp_path / "data")
    path = tmp_path / "split.json"
    first = load_or_create_dataset_split(path, pairs, "folder", 0.6, 0.2, 0.2, seed=3)
    digest = split_digest(path)
    again = load_or_create_dataset_split(path, pairs, "folder", 0.5, 0.25, 0.25, seed=9)
    assert again == json.loads(path.read_text()) and again["train"] == first["train"]
    assert split_digest(path) == digest and len(digest) == 64


def test_split_command_writes_then_shows(tmp_path, capsys):
    qata(tmp_path / "q")
    out = tmp_path / "split.json"
    assert main(["split", "--data", str(tmp_path / "q"), "--layout", "qata-cov19", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "wrote" in text and "test" in text and "official test folder" in text
    written = out.read_text()
    assert main(["split", "--data", str(tmp_path / "q"), "--layout", "qata-cov19", "--output", str(out),
                 "--seed", "5"]) == 0
    assert "exists" in capsys.readouterr().out and out.read_text() == written  # never silently replaced
    assert main(["split", "--data", str(tmp_path / "nothing"), "--output", str(out)]) == 2
    assert "nothing" in capsys.readouterr().err
