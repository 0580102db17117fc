import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from leafseg import data as D
from leafseg.data import load_or_create_split as load_or_create_dataset_split


def write_pair(root, stem, image, mask, image_ext=".png", mask_ext=".png"):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{stem}{image_ext}")
    Image.fromarray(mask).save(root / "masks" / f"{stem}{mask_ext}")


def test_pairs_by_stem_natural_order(tmp_path):
    rgb = np.zeros((6, 8, 3), np.uint8)
    m = np.zeros((6, 8), np.uint8)
    for stem in ["10", "2", "1"]:
        write_pair(tmp_path, stem, rgb, m, ".jpg", ".png")
    pairs = D.find_pairs(tmp_path)
    assert [p.stem for p in pairs] == ["1", "2", "10"]
    assert pairs[0].image.suffix == ".jpg" and pairs[0].mask.suffix == ".png"


def test_missing_partner_names_the_file(tmp_path):
    write_pair(tmp_path, "a", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "b.png")
    with pytest.raises(ValueError, match=r"b\.png"):
        D.find_pairs(tmp_path)


def test_missing_folder_and_corrupt_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="images"):
        D.find_pairs(tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        D.load_image(bad)
    with pytest.raises(ValueError, match="broken.png"):
        D.load_mask(bad)


def test_image_modes(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert D.load_image(tmp_path / "rgba.png").shape == (4, 5, 3)
    assert D.load_image(tmp_path / "rgba.png")[0, 0, 0] == 200  # alpha dropped, not blended
    grey = np.full((4, 5), 77, np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    np.testing.assert_array_equal(D.load_image(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, -1))
    deep = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 1000)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    img16 = D.load_image(tmp_path / "deep.png")
    assert img16.dtype == np.uint8 and img16.min() == 0 and img16.max() == 255


def test_mask_binarisation_rules(tmp_path):
    m = np.array([[0, 127, 128, 255]], np.uint8)
    Image.fromarray(m).save(tmp_path / "m8.png")
    np.testing.assert_array_equal(D.load_mask(tmp_path / "m8.png"), [[False, False, True, True]])
    Image.fromarray(np.array([[0, 1, 1, 0]], np.uint8)).save(tmp_path / "labels.png")
    np.testing.assert_array_equal(D.load_mask(tmp_path / "labels.png"), [[False, True, True, False]])
    Image.fromarray(np.array([[0, 65535, 30000, 40000]], np.uint16)).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(D.load_mask(tmp_path / "m16.png"), [[False, True, False, True]])
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 1] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(D.load_mask(tmp_path / "rgb.png"), [[False, True]])


def test_size_mismatch_names_both_files(tmp_path):
    write_pair(tmp_path, "x", np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match=r"x\.png.*x\.png"):
        D.load_arrays(D.find_pairs(tmp_path), 8)


def test_load_arrays_resizes(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 255
    write_pair(tmp_path, "a", np.full((20, 30, 3), 9, np.uint8), mask)
    images, masks = D.load_arrays(D.find_pairs(tmp_path), 16)
    assert images.shape == (1, 3, 16, 16) and images.dtype == torch.uint8
    assert masks.shape == (1, 16, 16) and masks.dtype == torch.bool
    assert 0.1 < masks.float().mean() < 0.25  # the square is 1/6 of the area


def test_flip():
    x = torch.arange(4).view(1, 2, 2)
    assert D.flip(x, True, False).tolist() == [[[1, 0], [3, 2]]]
    assert D.flip(x, False, True).tolist() == [[[2, 3], [0, 1]]]
    assert D.flip(x, False, False) is x


def test_split_deterministic_and_reused(tmp_path):
    stems = [str(i) for i in range(1, 101)]
    a = D.make_split(stems, 0.6, 0.2, 0.2, seed=3)
    b = D.make_split(list(reversed(stems)), 0.6, 0.2, 0.2, seed=3)  # listing order does not matter
    assert a == b
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (60, 20, 20)
    assert sorted(a["train"] + a["val"] + a["test"], key=int) == stems
    assert D.make_split(stems, 0.6, 0.2, 0.2, seed=4) != a
    path = tmp_path / "split.json"
    pairs = [D.Pair(s, tmp_path / f"{s}.png", tmp_path / f"{s}.png") for s in stems]
    first = load_or_create_dataset_split(path, pairs, "folder", 0.6, 0.2, 0.2, seed=3)
    again = load_or_create_dataset_split(path, pairs, "folder", 0.5, 0.25, 0.25, seed=9)  # existing file wins
    assert first == again == json.loads(path.read_text())
    assert {k: first[k] for k in ("train", "val", "test")} == {k: a[k] for k in ("train", "val", "test")}


def test_split_validation(tmp_path):
    with pytest.raises(ValueError, match="sum to 1"):
        D.make_split(["a"], 0.5, 0.2, 0.2)
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["a", "zz"], "val": [], "test": []}))
    with pytest.raises(ValueError, match="zz"):
        D.read_split(path, ["a", "b"])
    path.write_text(json.dumps({"train": ["a"], "val": ["a"], "test": []}))
    with pytest.raises(ValueError, match="more than one split"):
        D.read_split(path)
    path.write_text("{oops")
    with pytest.raises(ValueError, match="split.json"):
        D.read_split(path)


def test_a_grey_voc_mask_with_a_255_void_border_is_refused_naming_file_and_values(tmp_path):
    """{0 background, 1 object, 255 void border} saved as grey once read as an intensity mask: the border became the
    object and the object background (val Dice 0.06). Now it is refused; intensity masks keep their reading."""
    voc = np.zeros((8, 8), np.uint8)
    voc[2:6, 2:6] = 255
    voc[3:5, 3:5] = 1
    Image.fromarray(voc).save(tmp_path / "voc.png")
    with pytest.raises(ValueError, match=r"voc\.png: mask holds label value\(s\) \[1\] beside 255"):
        D.load_mask(tmp_path / "voc.png")
    Image.fromarray(np.where(voc == 1, 2, voc).astype(np.uint8)).save(tmp_path / "voc2.png")
    with pytest.raises(ValueError, match=r"label value\(s\) \[2\] beside 255"):
        D.load_mask(tmp_path / "voc2.png")
    soft = np.array([[0, 64, 128, 192, 255]], np.uint8)  # anti-aliased edges: intensities, as before
    Image.fromarray(soft).save(tmp_path / "soft.png")
    np.testing.assert_array_equal(D.load_mask(tmp_path / "soft.png"), [[False, False, True, True, True]])
    palette = Image.fromarray(voc, mode="L").convert("P")  # in a palette image 255 stays VOC's void border
    palette.putpalette([0, 0, 0, 128, 0, 0] + [224] * 762)
    palette.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(D.load_mask(tmp_path / "pal.png"), voc == 1)


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 12), st.integers(2, 12), st.integers(0, 2**32 - 1),
       st.sampled_from(["0/255", "0/1", "0/k", "voc-grey"]), st.integers(2, 200))
def test_mask_reading_property(tmp_path_factory, h, w, seed, encoding, k):
    """Any binary mask written as 0/255, 0/1 or 0/k reads back as itself; a grey mask with small labels beside a
    255 border (VOC's convention) is refused, naming the file."""
    rng = np.random.default_rng(seed)
    truth = rng.random((h, w)) < 0.5
    truth[0, 0], truth[-1, -1] = True, False  # both values present
    path = tmp_path_factory.mktemp("m") / "mask.png"
    if encoding == "voc-grey":
        grey = np.where(truth, min(k, 20), 0).astype(np.uint8)
        grey[0, :] = 255  # the void border
        grey[-1, 0], grey[-1, -1] = min(k, 20), 0  # an object pixel and background outside it
        Image.fromarray(grey).save(path)
        with pytest.raises(ValueError, match=r"mask\.png: mask holds label value"):
            D.load_mask(path)
        return
    value = {"0/255": 255, "0/1": 1, "0/k": k}[encoding]
    Image.fromarray(truth.astype(np.uint8) * value).save(path)
    np.testing.assert_array_equal(D.load_mask(path), truth)
