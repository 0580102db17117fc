"""The frame-level "nothing here" decision: scores against hand-computed values, the calibration rule, the decision
stored with a model, applied by the pipeline / predict / evaluate, and switchable."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from leafseg.cli import main
from leafseg.pipelines.frame_decision import FrameDecision, calibrate, frame_scores, roc_auc
from tiny import tiny_pipeline


def test_frame_scores_by_hand():
    p = torch.zeros(2, 4, 4)
    p[0, 0, :2] = torch.tensor([0.9, 0.7])  # two pixels above 0.5: area 2/16, peak 0.9, confidence 0.8
    p[1, 1, 1] = 0.4                        # none above: area 0, peak 0.4, confidence 0
    s = frame_scores(p, 0.5)
    np.testing.assert_allclose(s["area"], [2 / 16, 0.0])
    np.testing.assert_allclose(s["peak"], [0.9, 0.4], rtol=1e-6)
    np.testing.assert_allclose(s["confidence"], [0.8, 0.0], rtol=1e-6)


def test_roc_auc_by_hand():
    assert roc_auc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert roc_auc([0.1, 0.9], [True, False]) == 0.0
    assert roc_auc([0.5, 0.5], [True, False]) == 0.5  # a tie counts half
    assert roc_auc([0.5], [True]) is None


def test_calibration_clears_the_most_negatives_within_the_allowed_drop():
    # five frames with an object (Dice 0.8 each), four without; the area separates them but for one each side
    pos = {"area": np.array([0.05, 0.2, 0.3, 0.4, 0.5]), "peak": np.full(5, 0.9), "confidence": np.full(5, 0.9)}
    neg = {"area": np.array([0.01, 0.02, 0.03, 0.35]), "peak": np.full(4, 0.9), "confidence": np.full(4, 0.9)}
    dice = np.full(5, 0.8)
    strict = calibrate(pos, dice, neg, max_drop=0.01)
    d = strict["decision"]
    assert d.score == "area" and 0.03 < d.threshold <= 0.05  # clearing the 0.05 frame would cost 0.16 of Dice
    best = next(c for c in strict["candidates"] if c["score"] == "area")
    assert best["negatives_cleared"] == 3 and best["positives_cleared"] == 0 and best["dice_drop"] == 0
    assert best["auroc"] == pytest.approx(1 - 3 / 20)  # the 0.35 negative outranks three of the five positives
    same = calibrate(pos, dice, neg, max_drop=0.2)  # clearing the 0.05 frame too would clear no more negatives
    assert same["decision"] == d
    loose = calibrate(pos, dice, neg, max_drop=0.5)  # three of five may go (a drop of 0.48): the 0.35 one goes too
    assert 0.35 < loose["decision"].threshold <= 0.4 and loose["candidates"][0]["positives_cleared"] == 3
    flat = calibrate({k: np.full(5, 0.9) for k in pos}, dice, {k: np.full(4, 0.9) for k in pos}, 0.01)
    assert flat["decision"] is None  # no score tells them apart within the drop


def test_a_decision_is_checked():
    with pytest.raises(ValueError, match="score must be one of"):
        FrameDecision("size", 0.1)
    with pytest.raises(ValueError, match="frame_decision must be"):
        FrameDecision.from_config({"threshold": 0.1})
    assert FrameDecision.from_config(None) is None


def test_the_pipeline_applies_a_stored_decision_unless_told_not_to(tmp_path):
    pipe = tiny_pipeline()
    images = [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    plain = pipe(images, threshold=0.5)
    assert plain.cleared == [False] * 3 and len(plain.frame_scores) == 3
    peaks = [s["peak"] for s in plain.frame_scores]
    cut = float(np.median(peaks)) + 1e-9  # clears the frames whose peak is at or below the median
    pipe.register_to_config(frame_decision={"score": "peak", "threshold": cut})
    pipe.save_pretrained(tmp_path / "model")
    from leafseg import load_pipeline

    loaded = load_pipeline(tmp_path / "model", device="cpu")
    out = loaded(images, threshold=0.5)
    expected = [p < cut for p in peaks]
    assert out.cleared == expected and any(expected) and not all(expected)
    for m, c, p in zip(out.masks, out.cleared, plain.masks):
        assert (not m.any()) if c else np.array_equal(m, p)
    off = loaded(images, threshold=0.5, frame_decision=False)
    assert off.cleared == [False] * 3 and all(np.array_equal(a, b) for a, b in zip(off.masks, plain.masks))


@pytest.fixture
def model_and_frames(tmp_path):
    """A saved tiny model and a folder of frames, half of them without an object."""
    tiny_pipeline().save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for i in range(8):
        image = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
        Image.fromarray(image).save(tmp_path / "data" / "images" / f"{i}.png")
        mask = np.zeros((32, 32), np.uint8)
        if i % 2 == 0:
            mask[8:20, 8:20] = 255
        Image.fromarray(mask).save(tmp_path / "data" / "masks" / f"{i}.png")
    return tmp_path / "model", tmp_path / "data"


def test_evaluate_calibrate_and_evaluate_again(tmp_path, model_and_frames, capsys):
    model, data = model_and_frames
    first = tmp_path / "eval-1"
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "all", "--output", str(first),
                 "--batch-size", "4"]) == 0
    summary = json.loads((first / "summary.json").read_text())
    fl = summary["frame_level"]
    assert fl["n_with_object"] == 4 and fl["n_without_object"] == 4 and fl["cleared"] == 0
    assert set(fl["auroc"]) == {"area", "peak", "confidence"}
    rows = list(csv.DictReader(open(first / "frame_scores.csv")))
    columns = {"name", "has_object", "given_mask", "area", "peak", "confidence", "cleared"}
    assert len(rows) == 8 and columns <= set(rows[0])
    assert "frame level: sensitivity" in capsys.readouterr().out
    # a Dice drop of up to 1 allowed: the decision clears every frame without an object (the rule's extreme)
    assert main(["calibrate", "--model", str(model), "--positives", str(first), "--negatives", str(first),
                 "--max-drop", "0.99"]) == 0
    text = capsys.readouterr().out
    assert "chosen: clear a frame when its" in text and "stored in" in text
    stored = json.loads((model / "model_index.json").read_text())["frame_decision"]
    assert stored["score"] in ("area", "peak", "confidence") and "rule" in stored
    second = tmp_path / "eval-2"
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "all", "--output", str(second),
                 "--batch-size", "4"]) == 0
    again = json.loads((second / "summary.json").read_text())
    assert again["inference"]["frame_decision"]["score"] == stored["score"]
    assert again["frame_level"]["specificity"] == 1.0 and again["frame_level"]["cleared"] >= 4
    assert again["metrics"]["empty"]["both_empty"] == 4
    # switched off: the first evaluation's masks again
    third = tmp_path / "eval-3"
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "all", "--output", str(third),
                 "--batch-size", "4", "--no-frame-decision"]) == 0
    off = json.loads((third / "summary.json").read_text())
    assert off["metrics"]["dice"]["mean"] == summary["metrics"]["dice"]["mean"]
    assert off["inference"]["frame_decision"] is None
    # predict applies it too
    assert main(["predict", "--model", str(model), "--input", str(data / "images"), "--output",
                 str(tmp_path / "pred")]) == 0
    for i in range(1, 8, 2):
        assert not np.asarray(Image.open(tmp_path / "pred" / f"{i}_mask.png")).any()


def test_calibrate_refuses_other_models_and_test_splits(tmp_path, model_and_frames, capsys):
    model, data = model_and_frames
    ev = tmp_path / "ev"
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "all", "--output", str(ev)]) == 0
    tiny_pipeline(seed=5).save_pretrained(tmp_path / "other")
    assert main(["calibrate", "--model", str(tmp_path / "other"), "--positives", str(ev), "--negatives",
                 str(ev)]) == 2
    assert "evaluates another model" in capsys.readouterr().err
    summary = json.loads((ev / "summary.json").read_text())
    summary["split"] = "test"
    (ev / "summary.json").write_text(json.dumps(summary))
    assert main(["calibrate", "--model", str(model), "--positives", str(ev), "--negatives", str(ev)]) == 2
    assert "test-split evaluation" in capsys.readouterr().err
    assert main(["calibrate", "--model", str(model), "--positives", str(tmp_path / "nowhere"), "--negatives",
                 str(ev)]) == 2
    assert "summary.json: not found" in capsys.readouterr().err
