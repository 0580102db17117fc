"""The nnU-Net peer script (benchmarks/peers/nnunet.py): a leafseg dataset + split file as an nnU-Net raw dataset,
and nnU-Net's own planning where its environment is installed."""

import argparse
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leafseg import data as D

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "nnunet.py"


def nnunet_script():
    spec = importlib.util.spec_from_file_location("nnunet_peer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def converted(tmp_path, synthetic):
    split_file = tmp_path / "split.json"
    D.write_or_show_split(synthetic, "folder", split_file, 0.5, 0.25, 0.25)
    script = nnunet_script()
    raw = script.convert(argparse.Namespace(
        work=str(tmp_path / "work"), id=990, name="Synthetic", data=str(synthetic), layout="folder",
        split_file=str(split_file)))
    return raw, json.loads(split_file.read_text()), tmp_path / "work"


def test_convert_writes_an_nnunet_raw_dataset(converted, synthetic):
    raw, split, work = converted
    assert raw.name == "Dataset990_Synthetic"
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"} and meta["file_ending"] == ".png"
    assert meta["labels"] == {"background": 0, "foreground": 1}
    assert meta["numTraining"] == len(split["train"]) + len(split["val"])
    train_cases = sorted(p.name.removesuffix("_0000.png") for p in (raw / "imagesTr").iterdir())
    assert train_cases == sorted(split["train"] + split["val"])
    assert sorted(p.stem for p in (raw / "labelsTs").iterdir()) == sorted(split["test"])
    # fold 0 is leafseg's split, so nnU-Net chooses its checkpoint on the same val cases
    folds = json.loads((work / "preprocessed" / raw.name / "splits_final.json").read_text())
    assert folds == [{"train": split["train"], "val": split["val"]}]
    # labels are 0/1 and equal the masks as leafseg reads them; images are the RGB pixels unchanged
    stem = split["test"][0]
    pairs = {p.stem: p for p in D.find_dataset(synthetic)}
    label = np.asarray(Image.open(raw / "labelsTs" / f"{stem}.png"))
    assert set(np.unique(label)) <= {0, 1}
    np.testing.assert_array_equal(label.astype(bool), D.load_mask(pairs[stem].mask))
    np.testing.assert_array_equal(np.asarray(Image.open(raw / "imagesTs" / f"{stem}_0000.png")),
                                  D.load_image(pairs[stem].image))


def test_convert_refuses_an_existing_dataset(converted, synthetic):
    raw, _, work = converted
    script = nnunet_script()
    with pytest.raises(SystemExit, match="exists"):
        script.convert(argparse.Namespace(
            work=str(work), id=990, name="Synthetic", data=str(synthetic), layout="folder",
            split_file=str(raw.parent / "none.json")))


@pytest.mark.skipif(not (SCRIPT.parent / ".venv-nnunet" / "bin" / "nnUNetv2_plan_and_preprocess").exists(),
                    reason="nnU-Net's own environment is not installed (python benchmarks/peers/nnunet.py setup: "
                           "torch 2.14.1 + torchvision, several GB)")
def test_nnunet_plans_the_converted_dataset(converted):
    raw, _, work = converted
    script = nnunet_script()
    script.plan(argparse.Namespace(id=990, work=str(work)))
    plans = json.loads((work / "preprocessed" / raw.name / "nnUNetPlans.json").read_text())
    assert "2d" in plans["configurations"]
    assert os.listdir(work / "preprocessed" / raw.name / "nnUNetPlans_2d")
