import csv
import json

import numpy as np
import pytest
from PIL import Image

from leafseg.cli import main
from tiny import tiny_pipeline


@pytest.fixture
def model_and_data(tmp_path):
    tiny_pipeline().save_pretrained(tmp_path / "run" / "model-best")
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i, (h, w) in enumerate([(40, 30), (32, 32), (20, 50), (33, 17)]):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(tmp_path / "data" / "images" / f"{i}.png")
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4: h // 2, w // 4: w // 2] = 255
        Image.fromarray(mask).save(tmp_path / "data" / "masks" / f"{i}.png")
    (tmp_path / "run" / "split.json").write_text(json.dumps({"train": ["0"], "val": ["1"], "test": ["2", "3"]}))
    return tmp_path / "run" / "model-best", tmp_path / "data"


def test_predict_folder_writes_masks_overlays_uncertainty(tmp_path, model_and_data):
    model, data = model_and_data
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model), "--input", str(data / "images"), "--output", str(out),
                 "--ensemble", "2", "--uncertainty"]) == 0
    for i, size in enumerate([(30, 40), (32, 32), (50, 20), (17, 33)]):
        mask = Image.open(out / f"{i}_mask.png")
        assert mask.size == size and set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Image.open(out / f"{i}_overlay.png").size == size
        assert (out / f"{i}_uncertainty.png").exists()


def test_predict_single_file(tmp_path, model_and_data):
    model, data = model_and_data
    assert main(["predict", "--model", str(model), "--input", str(data / "images" / "2.png"),
                 "--output", str(tmp_path / "one")]) == 0
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["2_mask.png", "2_overlay.png"]


def test_evaluate_uses_the_runs_split_and_writes_reports(tmp_path, model_and_data):
    model, data = model_and_data
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "test"]) == 0
    out = model / "eval-test"
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert [r["name"] for r in rows] == ["2", "3"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 2 and summary["split"] == "test"
    assert 0 <= summary["metrics"]["dice"]["mean"] <= 1
    assert summary["split_file"].endswith("split.json")
    assert len(list((out / "overlays").iterdir())) == 2


def test_errors_name_the_problem(tmp_path, model_and_data, capsys):
    model, data = model_and_data
    assert main(["predict", "--model", str(tmp_path / "nope"), "--input", str(data), "--output", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["predict", "--model", str(model), "--input", str(tmp_path / "missing.png"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split-file",
                 str(tmp_path / "none.json")]) == 2
    assert "none.json" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in capsys.readouterr().err
