"""Label tables (labels.json / nnU-Net dataset.json), label maps refused on unknown values, grouped splits."""

import json

import numpy as np
import pytest

from leafseg.data.labels import LabelTable, find_label_table, read_label_table
from leafseg.data.splits import make_split, read_split_groups


def test_labels_json_value_to_name(tmp_path):
    f = tmp_path / "labels.json"
    f.write_text(json.dumps({"0": "background", "2": "left lung", "1": "right lung"}))
    table = read_label_table(f)
    assert table.names == ("background", "right lung", "left lung")
    assert table.values == (0, 1, 2)
    assert table.num_classes == 2 and not table.binary
    assert find_label_table(tmp_path) == f


def test_nnunet_dataset_json(tmp_path):
    f = tmp_path / "dataset.json"
    f.write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
                             "numTraining": 3, "file_ending": ".nii.gz"}))
    table = read_label_table(f)
    assert table.to_dict() == {"background": 0, "liver": 1, "tumour": 2}
    assert find_label_table(tmp_path) == f


def test_one_structure_is_binary(tmp_path):
    table = LabelTable.from_dict({"background": 0, "polyp": 255})
    assert table.binary
    mask = np.array([[0, 255], [255, 0]], np.uint8)
    assert table.indices(mask).tolist() == [[0, 1], [1, 0]]
    assert table.values_of(table.indices(mask)).tolist() == mask.tolist()


@pytest.mark.parametrize("bad, words", [
    ({"background": 1, "a": 2}, "background must be value 0"),
    ({"background": 0, "a": 1, "b": 1}, "appear once"),
    ({"background": 0, "a": [1, 2]}, "region"),
    ({"background": 0, "a": 300}, "0..255"),
    ({"background": 0}, "at least one structure"),
])
def test_bad_tables_refused(bad, words):
    with pytest.raises(ValueError, match=words):
        LabelTable.from_dict(bad, "t.json")


def test_dataset_json_without_labels_refused(tmp_path):
    f = tmp_path / "dataset.json"
    f.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="dataset.json: no \"labels\""):
        read_label_table(f)


def test_unknown_value_names_file_and_value():
    table = LabelTable.from_dict({"0": "background", "1": "a", "2": "b"}, "labels.json")
    with pytest.raises(ValueError, match=r"case7\.png: mask value\(s\) \[5\] not in the label table"):
        table.indices(np.array([[0, 1], [2, 5]], np.uint8), "case7.png")
    with pytest.raises(ValueError, match="fractions"):
        table.indices(np.array([[0.5, 1.0]]), "f.nii.gz")


def test_noncontiguous_values_round_trip():
    table = LabelTable.from_dict({"background": 0, "cup": 50, "disc": 200})
    mask = np.array([[0, 50, 200]], np.uint8)
    idx = table.indices(mask)
    assert idx.tolist() == [[0, 1, 2]]
    assert table.values_of(idx).tolist() == mask.tolist()


def test_grouped_split_keeps_groups_apart():
    stems = [f"s{i}" for i in range(40)]
    groups = {s: f"p{i // 3}" for i, s in enumerate(stems)}  # 14 patients, most with 3 images
    split = make_split(stems, 0.6, 0.2, 0.2, seed=3, groups=groups)
    seen = {k: {groups[s] for s in split[k]} for k in ("train", "val", "test")}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(stems)
    assert 8 <= len(split["val"]) <= 10 and 8 <= len(split["test"]) <= 10
    assert split == make_split(stems, 0.6, 0.2, 0.2, seed=3, groups=groups)  # deterministic


def test_grouped_split_needs_every_stem(tmp_path):
    with pytest.raises(ValueError, match="without a group"):
        make_split(["a", "b"], 0.5, 0.5, 0.0, groups={"a": "1"})
    f = tmp_path / "sources.csv"
    f.write_text("stem,file,patientid\na,x.png,7\nb,y.png,7\n")
    assert read_split_groups(f, "patientid") == {"a": "7", "b": "7"}
    with pytest.raises(ValueError, match="no column 'patient'"):
        read_split_groups(f, "patient")
