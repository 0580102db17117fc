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
    out = model.parent / "eval-model-best-test"  # beside the model folder, never inside it
    assert not list(model.glob("eval*"))
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert [r["name"] for r in rows] == ["2", "3"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 2 and summary["split"] == "test"
    assert 0 <= summary["metrics"]["dice"]["mean"] <= 1
    assert summary["split_file"].endswith("split.json")
    assert len(list((out / "overlays").iterdir())) == 2
    assert (out / "grid.png").exists() and (out / "worst_cases.png").exists()


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


def test_evaluate_seeds_worst_cases_figures_and_hashes(tmp_path, model_and_data):
    model, data = model_and_data
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "all", "--output", str(out),
                 "--seeds", "3", "--worst", "2", "--spacing", "0.5", "0.5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["checkpoint_sha256"]) == 64 and summary["split_file_sha256"] is None
    assert summary["inference"]["seeds"] == 3 and summary["seed_stability"]["seeds"] == [0, 1000, 2000]
    st = summary["seed_stability"]
    assert 0 <= st["dice_std_mean"] <= st["dice_std_max"] <= 0.5 and 0 <= st["disagreement_mean"] <= 1
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    dices = sorted(float(r["dice"]) for r in rows)
    assert [w["dice"] for w in summary["worst_cases"]] == dices[:2]
    assert len(list(csv.DictReader(open(out / "seed_stability.csv")))) == 4
    assert "mm" not in summary["metrics"]["units"] and "0.5" in summary["metrics"]["units"]
    grid, worst = Image.open(out / "grid.png"), Image.open(out / "worst_cases.png")
    assert grid.size[0] == worst.size[0] == 4 * 192 + 28  # four 192-px columns and the uncertainty colour bar
    panel = Image.open(out / "overlays" / "0.png")
    # image | ground truth | prediction | uncertainty + colour bar (28 px), under a 20-px title strip (case, Dice)
    assert panel.size == (4 * 30 + 28, 40 + 20)


def test_evaluate_with_split_file_records_its_hash(tmp_path, model_and_data):
    model, data = model_and_data
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--output", str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    from leafseg.data import split_digest
    assert summary["split_file_sha256"] == split_digest(model.parent / "split.json")


def test_evaluate_takes_the_layout_from_the_run_config(tmp_path, model_and_data):
    model, data = model_and_data
    cvc = tmp_path / "cvc"
    (cvc / "Original").mkdir(parents=True)
    (cvc / "Ground Truth").mkdir()
    for p in (data / "images").iterdir():
        Image.open(p).save(cvc / "Original" / f"{p.stem}.tif")
        Image.open(data / "masks" / p.name).save(cvc / "Ground Truth" / f"{p.stem}.tif")
    (model.parent / "config.yaml").write_text("data:\n  layout: cvc-clinicdb\n")
    assert main(["evaluate", "--model", str(model), "--data", str(cvc), "--output", str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["layout"] == "cvc-clinicdb" and summary["n_images"] == 2
    assert summary["config"] == {"data": {"layout": "cvc-clinicdb"}}


def test_predict_threshold_and_saved_probabilities_agree(tmp_path, model_and_data):
    model, data = model_and_data
    foreground = []
    for threshold in (0.3, 0.7):
        out = tmp_path / f"t{threshold}"
        assert main(["predict", "--model", str(model), "--input", str(data / "images"), "--output", str(out),
                     "--threshold", str(threshold), "--save-probabilities"]) == 0
        for i, size in enumerate([(30, 40), (32, 32), (50, 20), (17, 33)]):
            prob = np.load(out / f"{i}_probability.npy")
            assert prob.dtype == np.float32 and prob.shape == size[::-1]
            mask = np.asarray(Image.open(out / f"{i}_mask.png")) > 0
            np.testing.assert_array_equal(mask, prob > threshold)
        foreground.append(sum((np.asarray(Image.open(m)) > 0).sum() for m in out.glob("*_mask.png")))
    assert foreground[0] > foreground[1]  # the threshold is used, not 0.5 twice


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "export", "convert-ldm", "demo"])
def test_help_shows_defaults_and_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0 and "example:\n  leafseg " + command in text
    if command == "predict":
        assert "(default: 0.5)" in text and "(default: 1)" in text  # --threshold, --ensemble


def test_evaluate_reports_frames_without_an_object(tmp_path, model_and_data, capsys):
    model, data = model_and_data
    for i in (2, 3):  # the two test frames become frames without an object
        size = Image.open(data / "masks" / f"{i}.png").size
        Image.fromarray(np.zeros(size[::-1], np.uint8)).save(data / "masks" / f"{i}.png")
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "test"]) == 0
    out = capsys.readouterr().out
    empty = json.loads((model.parent / "eval-model-best-test" / "summary.json").read_text())["metrics"]["empty"]
    assert empty["gt_empty"] == 2 and empty["both_empty"] + empty["gt_empty_pred_not"] == 2
    assert empty["false_positive_rate"] == empty["gt_empty_pred_not"] / 2
    assert f"frames without an object: 2, left empty {empty['both_empty']}" in out
    report = (model.parent / "eval-model-best-test" / "report.md").read_text()
    assert "**Frames without an object**: 2" in report
