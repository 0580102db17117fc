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
    # and the hidden mark that lets --overwrite empty the folder later
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [".leafseg-output", "2_mask.png", "2_overlay.png",
                                                                    "names.csv"]


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


def test_evaluate_finds_the_split_its_run_trained_with_from_anywhere(tmp_path, model_and_data, monkeypatch,
                                                                     capsys):
    """A run records its datasets (RUN/sources.json, absolute paths): evaluate on one of them uses that split file
    from any working directory, and refuses --split all, which would score the training images."""
    model, data = model_and_data
    split = tmp_path / "splits" / "mine.json"
    split.parent.mkdir()
    split.write_text(json.dumps({"train": ["0", "1"], "val": [], "test": ["3"]}))
    (model.parent / "split.json").unlink()
    (model.parent / "sources.json").write_text(json.dumps([{"name": "data", "root": str(data.resolve()),
                                                            "layout": "folder", "split_file": str(split.resolve()),
                                                            "images": "images", "masks": "masks"}]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", "--model", str(model), "--data", "../data", "--output", "ev"]) == 0
    summary = json.loads((elsewhere / "ev" / "summary.json").read_text())
    assert summary["split_file"] == str(split.resolve()) and summary["n_images"] == 1
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--data", "../data", "--split", "all", "--output", "all"]) == 2
    err = capsys.readouterr().err
    assert "trained on this dataset" in err and "--include-training-data" in err and not (elsewhere / "all").exists()
    assert main(["evaluate", "--model", str(model), "--data", "../data", "--split", "all", "--output", "all",
                 "--include-training-data"]) == 0
    assert json.loads((elsewhere / "all" / "summary.json").read_text())["n_images"] == 4
    # another dataset: no split of its own in the run, so --split all is what scores it
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True), (other / "masks").mkdir()
    for sub in ("images", "masks"):
        (other / sub / "9.png").write_bytes((data / sub / "2.png").read_bytes())
    assert main(["evaluate", "--model", str(model), "--data", str(other), "--output", "other"]) == 2
    assert "not a dataset the model's run trained on" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model), "--data", str(other), "--split", "all", "--output", "o2"]) == 0


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


def test_figures_show_a_spread_of_results_not_the_first_names():
    """grid: quantiles of Dice among images with an object; worst: ties at Dice 0 broken by object size, not by
    name; frames without an object that got a mask: their own figure, largest first."""
    from leafseg.evaluation.evaluate import figure_cases

    def row(name, d, gt, pred):
        return {"name": name, "dice": d, "gt_empty": gt == 0, "pred_empty": pred == 0, "gt_pixels": gt,
                "pred_pixels": pred}

    rows = [row(f"benign{i:02d}", 0.80 + i / 100, 100, 90) for i in range(10)]  # first by name, all good
    rows += [row(f"m{i}", 0.0, 500 + i, 0) for i in range(3)] + [row("b-miss", 0.0, 10, 0)]
    rows += [row(f"z{i}", 0.5 + i / 10, 100, 100) for i in range(3)]
    rows += [row("normal1", 1.0, 0, 0), row("normal2", 0.0, 0, 40), row("normal3", 0.0, 0, 400)]
    cases = figure_cases(rows, k=8, worst_k=3)
    grid = [r["dice"] for r in cases["grid"]]
    assert len(grid) == 8 and grid == sorted(grid) and grid[0] == 0.0 and grid[-1] == 0.89
    assert [r["name"] for r in cases["worst"]] == ["m2", "m1", "m0"]  # the large misses, not "b-miss" by name
    assert [r["name"] for r in cases["false_positives"]] == ["normal3", "normal2"]
    assert all(not r["gt_empty"] for r in cases["grid"] + cases["worst"])


def test_uncertainty_colour_bar_stays_legible_in_a_figure():
    """A wide image's colour bar grows with it, so that the figure (192-px panels) shows it 28 px wide."""
    from leafseg.figures import figure, panel_row

    rng = np.random.default_rng(0)
    image = (rng.random((300, 576, 3)) * 255).astype(np.uint8)
    mask = np.zeros((300, 576), bool)
    row = panel_row(image, mask, mask, rng.random((300, 576)) * 0.5)
    assert row.shape[1] == 4 * 576 + 84  # the bar keeps 28/192 of a panel's width
    fig = figure([row], with_uncertainty=True)
    assert fig.shape[1] == 4 * 192 + 28


def test_evaluate_reports_lesion_only_metrics_subgroups_and_distance_cis(tmp_path, model_and_data, capsys):
    model, data = model_and_data
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(data / "masks" / "1.png")  # a frame without an object
    groups = tmp_path / "groups.csv"
    groups.write_text("name,group\n0,benign\n2,malignant\n3,malignant\n")
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "all", "--output", str(out),
                 "--groups", str(groups)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    m = summary["metrics"]
    assert m["with_object"]["n_images"] == 3 and "ci_low" in m["with_object"]["dice"]
    assert all(k in m[d] for d in ("hd95", "assd") for k in ("ci_low", "ci_high"))
    assert list(summary["groups"]) == ["(none)", "benign", "malignant"]
    assert [summary["groups"][g]["n_images"] for g in summary["groups"]] == [1, 1, 2]
    rows = {r["name"]: float(r["dice"]) for r in csv.DictReader(open(out / "per_image.csv"))}
    assert summary["groups"]["malignant"]["dice"]["mean"] == pytest.approx((rows["2"] + rows["3"]) / 2)
    report = (out / "report.md").read_text()
    assert "Subgroups" in report and "| malignant | 2 |" in report and "images with an object" in report
    assert "group malignant: 2 images" in printed and "images with an object: 3" in printed
    # a table for a whole dataset, evaluated on part of it: the other rows are said and not used
    groups.write_text("0,benign\n7,malignant\n")
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "all", "--output",
                 str(tmp_path / "ev2"), "--groups", str(groups)]) == 0
    assert "1 name(s) of" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev2" / "summary.json").read_text())["groups_unused"] == {"n": 1, "examples": ["7"]}
    # a table naming no evaluated image, or a malformed one, is refused before any work
    groups.write_text("7,benign\n8,malignant\n")
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "all", "--output",
                 str(tmp_path / "ev3"), "--groups", str(groups)]) == 2
    assert "groups.csv: none of its 2 names is an evaluated image" in capsys.readouterr().err
    groups.write_text("0,benign,extra\n")
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "all", "--output",
                 str(tmp_path / "ev4"), "--groups", str(groups)]) == 2
    assert "row 1 is not 'name,group'" in capsys.readouterr().err and not (tmp_path / "ev4").exists()


def test_score_gives_evaluates_numbers_for_the_same_masks(tmp_path, model_and_data, capsys):
    """predict + score = evaluate: the per-image metrics of leafseg predict's masks scored against the ground
    truth equal those evaluate computes itself (one scoring rule); names are matched with predict's _mask suffix,
    a missing prediction is named, and frames without an object are counted."""
    import shutil

    model, data = model_and_data
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "test", "--output",
                 str(tmp_path / "ev")]) == 0
    gt = tmp_path / "gt"
    gt.mkdir()
    test_images = tmp_path / "test-images"
    test_images.mkdir()
    for stem in ("2", "3"):
        shutil.copy(data / "masks" / f"{stem}.png", gt / f"{stem}.png")
        shutil.copy(data / "images" / f"{stem}.png", test_images / f"{stem}.png")
    assert main(["predict", "--model", str(model), "--input", str(test_images), "--output",
                 str(tmp_path / "pred")]) == 0
    capsys.readouterr()
    assert main(["score", "--pred", str(tmp_path / "pred"), "--gt", str(gt), "--images", str(test_images),
                 "--output", str(tmp_path / "sc")]) == 0
    assert "2 images: Dice" in capsys.readouterr().out
    ev = {r["name"]: r for r in csv.DictReader(open(tmp_path / "ev" / "per_image.csv"))}
    sc = {r["name"]: r for r in csv.DictReader(open(tmp_path / "sc" / "per_image.csv"))}
    assert sorted(sc) == ["2", "3"]
    for name in sc:
        for key in ("dice", "iou", "hd95", "tp", "fp", "fn"):
            assert sc[name][key] == ev[name][key], (name, key)
    s = json.loads((tmp_path / "sc" / "summary.json").read_text())
    e = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert s["metrics"]["dice"] == e["metrics"]["dice"] and s["kind"] == "score"
    assert (tmp_path / "sc" / "grid.png").exists()
    assert "# Scores: 2 cases" in (tmp_path / "sc" / "report.md").read_text()
    # a ground truth without a prediction is named (or scored empty when asked); an empty ground truth is counted
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(gt / "9.png")
    assert main(["score", "--pred", str(tmp_path / "pred"), "--gt", str(gt), "--output", str(tmp_path / "s2")]) == 2
    assert "no prediction for 1 of 3 ground-truth mask(s), e.g. 9" in capsys.readouterr().err
    assert main(["score", "--pred", str(tmp_path / "pred"), "--gt", str(gt), "--output", str(tmp_path / "s2"),
                 "--missing-as-empty"]) == 0
    s2 = json.loads((tmp_path / "s2" / "summary.json").read_text())
    assert s2["missing_predictions_scored_empty"] == ["9"] and s2["metrics"]["empty"]["both_empty"] == 1


def test_score_volumes_in_their_voxel_spacing(tmp_path):
    nib = pytest.importorskip("nibabel")
    from leafseg.evaluation.score import score

    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    gt = np.zeros((10, 10, 4), np.uint8)
    gt[2:6, 2:6, 1:3] = 1
    pred = np.zeros_like(gt)
    pred[2:6, 3:7, 1:3] = 1
    for folder, arr, name in (("gt", gt, "case.nii.gz"), ("pred", pred, "case_mask.nii.gz")):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(arr, affine), str(tmp_path / folder / name))
    result = score(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")
    row = next(csv.DictReader(open(tmp_path / "out" / "per_image.csv")))
    assert row["name"] == "case" and float(row["dice"]) == pytest.approx(2 * 24 / 64)
    assert float(row["hd95"]) == pytest.approx(0.5)  # one voxel along x, in mm
    assert result["summary"]["n_images"] == 1


def test_smaller_overlays_change_the_pictures_not_the_numbers(tmp_path, model_and_data):
    """--overlay-size draws large frames smaller (40x30 frames at 16 px here) and leaves every number as it was;
    the command's default is the library's."""
    from leafseg.cli import build_parser
    from leafseg.figures import OVERLAY_SIZE, fit_panels

    model, data = model_and_data
    for name, size in (("full", "0"), ("small", "16")):
        assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "all", "--output",
                     str(tmp_path / name), "--overlay-size", size, "--ensemble", "2"]) == 0
    assert (tmp_path / "full" / "per_image.csv").read_text() == (tmp_path / "small" / "per_image.csv").read_text()
    full, small = (json.loads((tmp_path / n / "summary.json").read_text())["metrics"] for n in ("full", "small"))
    assert full == small
    assert Image.open(tmp_path / "full" / "overlays" / "0.png").size == (4 * 30 + 28, 40 + 20)
    assert Image.open(tmp_path / "small" / "overlays" / "0.png").size[1] < 40
    parsed = build_parser().parse_args(["evaluate", "--model", "m", "--data", "d"])
    assert parsed.overlay_size == OVERLAY_SIZE
    image, gt = np.zeros((1080, 1920, 3), np.uint8), np.zeros((1080, 1920), bool)
    gt[500:600, 900:1100] = True
    small = fit_panels(image, gt, gt, np.ones((1080, 1920), np.float32) * 0.25, 512)
    assert [a.shape[:2] for a in small] == [(288, 512)] * 4 and small[1].dtype == bool and small[1].any()
    assert np.allclose(small[3], 0.25)
    assert fit_panels(image[:8, :8], gt[:8, :8], gt[:8, :8], None, 512)[0].shape == (8, 8, 3)  # small: unchanged


def test_evaluate_reading_ahead_and_scoring_behind_changes_no_number(tmp_path, model_and_data, monkeypatch):
    """The reader and scorer threads beside the inference give the serial evaluation's rows, figures and summary,
    in the same order (batch 1: several batches are in flight at once); a file that fails to read stops it with its
    own message."""
    import importlib

    ev = importlib.import_module("leafseg.evaluation.evaluate")  # the module (the package exports the function)
    model, data = model_and_data
    outputs = {}
    for overlap in (False, True):
        monkeypatch.setattr(ev, "OVERLAP", overlap)
        out = tmp_path / f"ev-{overlap}"
        assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "all", "--output", str(out),
                     "--batch-size", "1", "--ensemble", "2"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        outputs[overlap] = ((out / "per_image.csv").read_text(), summary["metrics"],
                            {p.name: p.read_bytes() for p in sorted((out / "overlays").iterdir())})
    assert outputs[True] == outputs[False]
    (data / "images" / "3.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="3.png"):
        ev.evaluate(str(model), str(data), "all", None, str(tmp_path / "broken"), batch_size=1)


def test_evaluate_and_predict_threshold(tmp_path, model_and_data, capsys):
    """--threshold: the scored and written masks are the pipeline's probabilities above it (the same probabilities
    at every threshold), recorded in summary.json and report.md; a threshold outside (0, 1) is refused before any
    work."""
    from leafseg.pipelines import load_pipeline

    model, data = model_and_data
    images = [np.asarray(Image.open(data / "images" / f"{i}.png")) for i in (2, 3)]
    prob = load_pipeline(str(model), "cpu")(images, seed=0).probabilities
    t = float(np.quantile(np.concatenate([p.ravel() for p in prob]), 0.3))  # a threshold that changes the masks
    counts = {}
    for threshold in (0.5, t):
        out = tmp_path / f"ev-{threshold}"
        assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "test", "--output", str(out),
                     "--threshold", str(threshold)]) == 0
        rows = list(csv.DictReader(open(out / "per_image.csv")))
        counts[threshold] = [int(r["pred_pixels"]) for r in rows]
        assert counts[threshold] == [int((p > threshold).sum()) for p in prob]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["inference"]["threshold"] == threshold
        assert (f"threshold {threshold}" in (out / "report.md").read_text()) == (threshold != 0.5)
    assert counts[0.5] != counts[t]
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(model), "--input", str(data / "images" / "2.png"), "--output", str(pred),
                 "--threshold", str(t)]) == 0
    assert np.array_equal(np.asarray(Image.open(pred / "2_mask.png")) > 0, prob[0] > t)
    for bad in ("0", "1", "1.5"):
        for command in (["evaluate", "--data", str(data), "--output", str(tmp_path / "bad-ev")],
                        ["predict", "--input", str(data / "images"), "--output", str(tmp_path / "bad-pr")]):
            assert main([command[0], "--model", str(model), *command[1:], "--threshold", bad]) == 2
            assert f"error: threshold must be a probability between 0 and 1 (exclusive), got {float(bad)}" in \
                capsys.readouterr().err
    assert not (tmp_path / "bad-ev").exists() and not (tmp_path / "bad-pr").exists()
