"""`leafseg compare`: two evaluations of the same images paired by name (mean difference, paired bootstrap CI,
wins), the errors it gives on bad input, and the polyp records' per-image Dice and pairing built on it."""

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from leafseg.cli import main
from leafseg.evaluation.compare import compare, compare_text, compare_values, read_per_image
from leafseg.metrics import SegmentationMetrics, bootstrap_mean_ci

FIELDS = ["name", "dice", "iou", "precision", "recall", "specificity", "hd95", "assd", "gt_empty", "pred_empty"]


def _evaluation(folder: Path, dice: dict, data: str = "/data/cvc", split: str = "val") -> Path:
    """A folder as `leafseg evaluate` leaves it, as far as compare reads it: per_image.csv and summary.json."""
    folder.mkdir(parents=True)
    with open(folder / "per_image.csv", "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for name, d in dice.items():
            w.writerow({"name": name, "dice": "nan" if d is None else d, "iou": "" if d is None else d / (2 - d),
                        "hd95": "nan" if d is None else 10 * (1 - d), "gt_empty": False, "pred_empty": d is None})
    (folder / "summary.json").write_text(json.dumps({"data": data, "split": split, "split_file": None}))
    return folder


def test_paired_ci_of_a_constant_shift_is_the_shift():
    b = {str(i): 0.5 + 0.01 * i for i in range(40)}
    a = {k: v + 0.1 for k, v in b.items()}
    c = compare_values(a, b)
    assert c["n"] == 40 and c["difference"] == pytest.approx(0.1)
    assert c["ci_low"] == pytest.approx(0.1) and c["ci_high"] == pytest.approx(0.1)  # no spread left once paired
    assert (c["a_better"], c["b_better"], c["equal"]) == (40, 0, 0)


def test_paired_ci_brackets_a_noisy_gain_and_counts_what_it_leaves_out():
    b = {str(i): 0.5 + 0.01 * i for i in range(40)}
    a = {k: v + (0.2 if int(k) % 2 else 0.0) for k, v in b.items()}  # +0.1 on average, half the images moved
    c = compare_values({**a, "undef": None, "only-a": 0.9}, {**b, "undef": 0.3, "only-b": 0.1})
    assert c["n"] == 40 and c["difference"] == pytest.approx(0.1)
    assert 0.04 < c["ci_low"] < 0.1 < c["ci_high"] < 0.16
    assert (c["a_better"], c["b_better"], c["equal"]) == (20, 0, 20)
    assert (c["only_in_a"], c["only_in_b"], c["undefined"]) == (["only-a"], ["only-b"], ["undef"])
    assert compare_values(a, b) == compare_values(a, b)  # seeded: the same CI every time


def test_bootstrap_mean_ci_is_the_ci_evaluate_reports():
    """The paired CI uses the resampling of the reports' own CIs: for Dice (the first metric drawn from the
    summary's seeded generator) the two are the same numbers."""
    rng = np.random.default_rng(3)
    m = SegmentationMetrics()
    for _ in range(30):
        gt = rng.random((24, 24)) > 0.5
        m.add(gt ^ (rng.random((24, 24)) > 0.8), gt)
    dice = m.summary(n_bootstrap=500, seed=7)["dice"]
    values = [r["dice"] for r in m.rows()]
    ci = bootstrap_mean_ci(values, n_bootstrap=500, seed=7)
    assert (ci["ci_low"], ci["ci_high"]) == (dice["ci_low"], dice["ci_high"])


def test_compare_two_evaluation_folders_and_the_cli(tmp_path, capsys):
    names = [f"{i:03d}" for i in range(30)]
    old = _evaluation(tmp_path / "old", {n: 0.70 + 0.005 * i for i, n in enumerate(names)})
    new = _evaluation(tmp_path / "new", {n: 0.75 + 0.005 * i for i, n in enumerate(names)})
    assert compare(new, old / "per_image.csv")["same_data"] is True  # a folder or the CSV itself
    bare = tmp_path / "bare.csv"
    bare.write_text((old / "per_image.csv").read_text())
    assert compare(new, bare)["same_data"] is None  # a CSV without its summary.json says nothing of its data
    c = compare(new, old)
    assert c["same_data"] is True and c["difference"] == pytest.approx(0.05)
    assert "A is better on these images" in compare_text(c)
    hd = compare(new, old, metric="hd95")  # lower is better: A's smaller distances are wins for A
    assert hd["difference"] == pytest.approx(-0.5) and hd["a_better"] == 30
    assert "A is better" in compare_text(hd)
    assert main(["compare", str(old), str(new), "--output", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "A - B -5.00 points" in out and "B is better on these images" in out
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["n"] == 30 and saved["difference"] == pytest.approx(-0.05)


def test_compare_warns_when_the_two_scored_different_data(tmp_path):
    a = _evaluation(tmp_path / "a", {"1": 0.8, "2": 0.9}, data="/data/cvc")
    b = _evaluation(tmp_path / "b", {"1": 0.7, "2": 0.9}, data="/data/kvasir")
    c = compare(a, b)
    assert c["same_data"] is False and "not the same data" in compare_text(c)
    assert "no difference shown" in compare_text(compare(a, a))


def _score_folder(folder: Path, dice: dict, gt: str) -> Path:
    """A folder as `leafseg score` leaves it: no data root or split, only the prediction and ground-truth folders."""
    _evaluation(folder, dice)
    (folder / "summary.json").write_text(json.dumps({"kind": "score", "pred": str(folder / "pred"), "gt": gt}))
    return folder


def test_score_folders_are_the_same_data_when_their_ground_truth_is(tmp_path):
    dice = {"1": 0.8, "2": 0.9}
    gt = tmp_path / "masks"
    gt.mkdir()
    a = _score_folder(tmp_path / "a", dice, str(gt))
    b = _score_folder(tmp_path / "b", dice, str(tmp_path / "." / "masks"))  # the same folder, spelt otherwise
    other = _score_folder(tmp_path / "other", dice, str(tmp_path / "other-masks"))
    assert compare(a, b)["same_data"] is True
    c = compare(a, other)
    assert c["same_data"] is False and "not the same data" in compare_text(c)
    assert c["scored_a"]["data"] == str(gt)
    evaluated = _evaluation(tmp_path / "evaluated", dice)  # a data root and split against a masks folder: unknown
    assert compare(a, evaluated)["same_data"] is None


def test_compare_and_score_load_no_torch():
    code = ("import sys; import leafseg.evaluation.compare, leafseg.evaluation.score\n"
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_compare_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*no per_image.csv"):
        read_per_image(tmp_path / "nowhere")
    bad = tmp_path / "bad.csv"
    bad.write_text("image,score\n1,0.5\n")
    with pytest.raises(ValueError, match="bad.csv: needs the columns 'name' and 'dice'"):
        read_per_image(bad)
    a = _evaluation(tmp_path / "a", {"1": 0.8})
    b = _evaluation(tmp_path / "b", {"2": 0.8})
    with pytest.raises(ValueError, match="no image is scored in both"):
        compare(a, b)
    with pytest.raises(ValueError, match="metric 'volume'"):
        compare(a, a, metric="volume")


def _script(path: str):
    name = Path(path).stem
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_polyp_records_keep_per_image_dice_and_pair_by_it(tmp_path, capsys):
    record = _script("experiments/polyp-recipe/polyp_record.py")
    names = [str(i) for i in range(20)]
    base = _evaluation(tmp_path / "base", {n: 0.6 + 0.01 * i for i, n in enumerate(names)})
    better = _evaluation(tmp_path / "better", {n: 0.62 + 0.01 * i for i, n in enumerate(names)})
    for folder in (base, better):  # the summary fields a record copies
        s = json.loads((folder / "summary.json").read_text())
        s.update(n_images=20, metrics={"dice": {"mean": 0.7, "ci_low": 0.6, "ci_high": 0.8}, "iou": {"mean": 0.6},
                                       "hd95": {"mean": None}, "empty": {}})
        (folder / "summary.json").write_text(json.dumps(s))
    ev_base, ev_better = record.evaluation(base), record.evaluation(better)
    assert ev_base["per_image_dice"]["3"] == pytest.approx(0.63)
    a = {"run": "B1", "evaluation": {"cvc_val": ev_better, "old_only": {"dice": 0.5}}}
    b = {"run": "B0", "evaluation": {"cvc_val": ev_base, "old_only": {"dice": 0.5}}}
    rows = record.pair(a, b)
    assert rows[0].startswith("| set | n | B1 | B0 |") and len(rows) == 3  # the set without per-image Dice left out
    assert "| cvc_val | 20 |" in rows[2] and "+2.0 [+2.0, +2.0] | 20 / 0 |" in rows[2]
    for run, ev in (("B1", ev_better), ("B0", ev_base)):
        (tmp_path / f"{run}.json").write_text(json.dumps({"run": run, "evaluation": {"cvc_val": ev}}))
    assert record.main(["--pair", str(tmp_path / "B1.json"), str(tmp_path / "B0.json")]) == 0
    assert "+2.0 [+2.0, +2.0]" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no set evaluated in both"):
        record.pair({"run": "x", "evaluation": {}}, b)
