"""leafseg.metrics on analytic shapes with hand-computed values (MONAI conventions; see the module docstring)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from leafseg import files
from leafseg import metrics as M


def square(top, left, size=10, shape=(30, 30)):
    m = np.zeros(shape, bool)
    m[top:top + size, left:left + size] = True
    return m


def disc(cy, cx, r, shape=(48, 48)):
    y, x = np.mgrid[:shape[0], :shape[1]]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def grid_3_1_2_10():
    """4x4 grid with TP=3, FP=1, FN=2, TN=10."""
    gt = np.zeros((4, 4), bool)
    pred = np.zeros((4, 4), bool)
    gt[0, :3] = gt[1, :2] = True  # 5 gt pixels
    pred[0, :3] = pred[3, 3] = True  # 4 pred pixels, 3 of them on gt
    return pred, gt


# ------------------------------------------------------------------------------------------------ overlap metrics
def test_overlapping_squares_exact_fractions():
    gt, pred = square(0, 0, shape=(20, 20)), square(5, 5, shape=(20, 20))  # 100 px each, 25 px overlap
    assert M.dice(pred, gt) == pytest.approx(50 / 200)
    assert M.iou(pred, gt) == pytest.approx(25 / 175)
    assert M.precision(pred, gt) == M.recall(pred, gt) == pytest.approx(0.25)
    assert M.specificity(pred, gt) == pytest.approx((400 - 175) / 300)


def test_precision_recall_specificity_hand_grid():
    pred, gt = grid_3_1_2_10()
    assert M.precision(pred, gt) == pytest.approx(3 / 4)
    assert M.recall(pred, gt) == pytest.approx(3 / 5)
    assert M.specificity(pred, gt) == pytest.approx(10 / 11)
    assert M.dice(pred, gt) == pytest.approx(6 / 9)
    assert M.iou(pred, gt) == pytest.approx(3 / 6)


def test_empty_rules():
    z, s = np.zeros((12, 12), bool), square(2, 2, 5, (12, 12))
    # both empty: a correct "nothing here" is perfect (configurable); distances 0
    assert M.dice(z, z) == M.iou(z, z) == 1.0
    assert M.dice(z, z, empty_score=0.0) == M.iou(z, z, empty_score=0.0) == 0.0
    assert M.hd95(z, z) == M.assd(z, z) == 0.0
    assert math.isnan(M.precision(z, z)) and math.isnan(M.recall(z, z)) and M.specificity(z, z) == 1.0
    # gt empty, pred not
    assert M.dice(s, z) == M.iou(s, z) == 0.0
    assert M.precision(s, z) == 0.0 and math.isnan(M.recall(s, z)) and M.specificity(s, z) == pytest.approx(119 / 144)
    assert math.isnan(M.hd95(s, z)) and math.isnan(M.assd(s, z))
    # gt not empty, pred empty
    assert M.dice(z, s) == M.iou(z, s) == 0.0
    assert math.isnan(M.precision(z, s)) and M.recall(z, s) == 0.0 and M.specificity(z, s) == 1.0
    assert math.isnan(M.hd95(z, s)) and math.isnan(M.assd(z, s))
    # gt covers everything: no negatives
    full = np.ones((4, 4), bool)
    assert math.isnan(M.specificity(full, full)) and M.dice(full, full) == 1.0
    with pytest.raises(ValueError):
        M.surface_distances(s, z)


def test_inputs_torch_and_validation():
    pred, gt = grid_3_1_2_10()
    assert M.dice(torch.from_numpy(pred).float(), torch.from_numpy(gt).long()) == pytest.approx(6 / 9)
    assert M.hd95(pred.astype(np.uint8), gt.astype(np.float32)) == M.hd95(pred, gt)
    with pytest.raises(ValueError, match="binarise"):
        M.dice(np.full((4, 4), 0.7), gt)
    with pytest.raises(ValueError, match="shapes differ"):
        M.dice(pred, gt[:3])


# ---------------------------------------------------------------------------------------------- surface distances
# A 10x10 square vs the same square shifted by 3 px along x. Edges (cross erosion) are the 36-pixel rings.
# Pred-edge -> nearest gt-edge distances: 14 zeros (shared top/bottom pixels), top/bottom overhang 1,2,3 (x2),
# left side rows 11..18 min(3, dy to top/bottom row) = 1,2,3,3,3,3,2,1, right side 3 (x8). Sorted: 14x0, 4x1,
# 4x2, 14x3; the reverse direction is its mirror image. 95th percentile: index 0.95*35 = 33.25 -> 3.
# ASSD = (4*1 + 4*2 + 14*3) / 36 = 54/36 = 1.5.
def test_shifted_square_hd95_assd_pixels():
    gt, pred = square(10, 10), square(10, 13)
    to_g, to_p = M.surface_distances(pred, gt)
    assert sorted(to_g) == sorted(to_p) == [0] * 14 + [1] * 4 + [2] * 4 + [3] * 14
    assert M.hd95(pred, gt) == pytest.approx(3.0)
    assert M.assd(pred, gt) == pytest.approx(1.5)
    assert M.hd95(gt, pred) == M.hd95(pred, gt) and M.assd(gt, pred) == M.assd(pred, gt)


def test_shifted_square_with_spacing():
    gt, pred = square(10, 10), square(10, 13)
    # isotropic spacing scales every distance
    assert M.hd95(pred, gt, spacing=(2.0, 2.0)) == pytest.approx(6.0)
    assert M.assd(pred, gt, spacing=2.0) == pytest.approx(3.0)
    # (sy, sx) = (2, 1), shift along x: left-side distances become min(3, 2*dy) = 2,3,3,3,3,3,3,2.
    # Multiset 14x0, 2x1, 4x2, 16x3 -> hd95 3, assd (2 + 8 + 48)/36 = 29/18.
    assert M.hd95(pred, gt, spacing=(2.0, 1.0)) == pytest.approx(3.0)
    assert M.assd(pred, gt, spacing=(2.0, 1.0)) == pytest.approx(29 / 18)
    # shift of 3 rows along y with (sy, sx) = (2, 1): 3 rows = 6 mm. Side overhangs 2,4,6 (x2), leading row
    # min(6, dx to the sides) = 1,2,3,4,4,3,2,1, trailing row 6 (x8): 14x0, 2x1, 4x2, 2x3, 4x4, 10x6.
    pred_y = square(13, 10)
    assert M.hd95(pred_y, gt, spacing=(2.0, 1.0)) == pytest.approx(6.0)
    assert M.assd(pred_y, gt, spacing=(2.0, 1.0)) == pytest.approx(92 / 36)


def test_disc_vs_shifted_disc():
    k = 4
    gt, pred = disc(20, 20, 8), disc(20, 20 + k, 8)
    inter = np.count_nonzero(gt & pred)
    assert M.dice(pred, gt) == pytest.approx(inter / gt.sum())  # equal areas: 2|∩|/(2|D|)
    assert M.iou(pred, gt) == pytest.approx(inter / np.count_nonzero(gt | pred))
    to_g, to_p = M.surface_distances(pred, gt)
    # every pred edge pixel minus (0, k) is a gt edge pixel, so distances <= k; the leading point is exactly k away
    assert max(to_g.max(), to_p.max()) == pytest.approx(k)
    assert 0 < M.hd95(pred, gt) <= k and M.hd95(pred, gt) == M.hd95(gt, pred)
    assert 0 < M.assd(pred, gt) < M.hd95(pred, gt)


def test_identical_and_border_touching():
    m = square(0, 0, 6, (10, 10))  # touches the image border: its border pixels are edges (outside = background)
    edges_to_edges, _ = M.surface_distances(m, m)
    assert edges_to_edges.size == 20 and M.hd95(m, m) == M.assd(m, m) == 0.0


# --------------------------------------------------------------------------------------------------- accumulator
def _random_masks(n=6, shape=(16, 20), seed=1):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape)) < 0.3, rng.random((n, *shape)) < 0.3


def test_accumulator_rows_and_summary():
    acc = M.SegmentationMetrics()
    pred, gt = grid_3_1_2_10()
    z, s = np.zeros((4, 4), bool), square(1, 1, 2, (4, 4))
    acc.update(pred, gt, name="a")
    acc.update(z, z, name="both_empty")
    acc.update(s, z, name="gt_empty")
    acc.update(z, s, name="pred_empty")
    rows = acc.rows()
    assert [r["name"] for r in rows] == ["a", "both_empty", "gt_empty", "pred_empty"]
    r = rows[0]
    assert (r["tp"], r["fp"], r["fn"], r["tn"], r["gt_pixels"], r["pred_pixels"]) == (3, 1, 2, 10, 5, 4)
    assert r["dice"] == pytest.approx(6 / 9) and not r["gt_empty"] and not r["pred_empty"]
    assert rows[1]["gt_empty"] and rows[1]["pred_empty"]

    sm = acc.summary(n_bootstrap=500, seed=0)
    dices = [6 / 9, 1.0, 0.0, 0.0]
    assert sm["n_images"] == 4
    assert sm["dice"]["mean"] == pytest.approx(np.mean(dices))
    assert sm["dice"]["median"] == pytest.approx(np.median(dices))
    assert sm["dice"]["std"] == pytest.approx(np.std(dices, ddof=1))
    assert sm["dice"]["ci_low"] <= sm["dice"]["mean"] <= sm["dice"]["ci_high"]
    assert sm["empty"] == {"gt_empty": 2, "pred_empty": 2, "both_empty": 1, "gt_empty_pred_not": 1,
                           "pred_empty_gt_not": 1, "empty_score": 1.0, "false_positive_rate": 0.5,
                           "false_positive_area_median": 4 / 16}  # the 2x2 square on a 4x4 frame
    # nan counts: precision nan when pred empty, recall when gt empty, distances when exactly one is empty
    assert sm["precision"]["n_nan"] == 2 and sm["precision"]["mean"] == pytest.approx((0.75 + 0.0) / 2)
    assert sm["recall"]["n_nan"] == 2 and sm["specificity"]["n_nan"] == 0
    assert sm["hd95"]["n_nan"] == 2 and sm["hd95"]["n_valid"] == 2
    assert sm["pooled"]["dice"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2 + 4 + 4))


def test_bootstrap_deterministic():
    acc = M.SegmentationMetrics()
    acc.update(*_random_masks(12))
    a, b = acc.summary(seed=3), acc.summary(seed=3)
    c = acc.summary(seed=4)
    for key in ("dice", "iou"):
        assert (a[key]["ci_low"], a[key]["ci_high"]) == (b[key]["ci_low"], b[key]["ci_high"])
        assert a[key]["ci_low"] < a[key]["mean"] < a[key]["ci_high"]
        assert a[key]["n_bootstrap"] == 2000 and a[key]["ci"] == 0.95
    assert (a["dice"]["ci_low"], a["dice"]["ci_high"]) != (c["dice"]["ci_low"], c["dice"]["ci_high"])


def test_batch_equals_per_image():
    pred, gt = _random_masks(5)
    batch, single = M.SegmentationMetrics(spacing=(1.5, 1.0)), M.SegmentationMetrics(spacing=(1.5, 1.0))
    batch.update(pred, gt, name=[f"im{i}" for i in range(5)])
    for i in range(5):
        single.update(torch.from_numpy(pred[i]), torch.from_numpy(gt[i]), name=f"im{i}")
    assert batch.rows() == single.rows()
    assert json.dumps(batch.summary(), sort_keys=True) == json.dumps(single.summary(), sort_keys=True)
    unnamed = M.SegmentationMetrics()
    unnamed.update(pred, gt)
    assert [r["name"] for r in unnamed.rows()] == ["0", "1", "2", "3", "4"]


# ------------------------------------------------------------------------------------------------------- writers
def test_write_csv_and_json_atomic(tmp_path):
    acc = M.SegmentationMetrics()
    acc.update(np.zeros((4, 4), bool), square(0, 0, 2, (4, 4)), name="x")
    rows = acc.rows()
    path = files.write_csv(rows, tmp_path / "out" / "per_image.csv")
    with open(path, newline="") as f:
        back = list(csv.DictReader(f))
    assert back[0]["name"] == "x" and back[0]["hd95"] == "nan" and list(back[0]) == list(rows[0])
    jpath = files.write_json({"summary": acc.summary(n_bootstrap=10), "arr": np.arange(2)}, tmp_path / "s.json")
    data = json.loads(jpath.read_text())  # strict JSON: nan -> null
    assert data["summary"]["hd95"]["mean"] is None and data["arr"] == [0, 1]
    files.write_json({"a": 1}, jpath)  # overwrite in place
    assert json.loads(jpath.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "s.json"]  # no temp files left
    with pytest.raises(TypeError):
        files.write_json({"bad": object()}, jpath)
    assert json.loads(jpath.read_text()) == {"a": 1} and len(list(tmp_path.iterdir())) == 2
