"""The ablation report's paired statistics (benchmarks/ablation.py): per-image Dice kept in a record, the paired
bootstrap CI of alignment on minus off, and the per-seed table."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("ablation", Path(__file__).parents[1] / "benchmarks" / "ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


def test_per_image_dice_reads_the_evaluation_csv(tmp_path):
    csv_file = tmp_path / "per_image.csv"
    csv_file.write_text("name,dice,iou\n2,0.9659307976884204,0.93\n15,nan,nan\n")
    assert ablation.per_image_dice(csv_file) == {"2": 0.965931, "15": None}


def test_paired_bootstrap_ci_of_the_mean_difference():
    off = {str(i): 0.5 + 0.01 * i for i in range(40)}
    shifted = {k: v + 0.1 for k, v in off.items()}
    lo, hi = ablation._paired_bootstrap(shifted, off)  # the same shift on every image: no spread at all
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    noisy = {k: v + (0.2 if int(k) % 2 else 0.0) for k, v in off.items()}  # mean +0.1, half the images moved
    lo, hi = ablation._paired_bootstrap({**noisy, "x": None}, {**off, "x": 0.3})  # unscored images left out
    assert 0.04 < lo < 0.1 < hi < 0.16
    assert ablation._paired_bootstrap(noisy, off) == (lo, hi)  # fixed seed: the report is reproducible


def record(dice, val, per_image=None):
    r = {"test": {"dice": {"mean": dice}}, "best_val_dice": val}
    return r if per_image is None else {**r, "test_per_image_dice": per_image}


def test_paired_section_rows_and_seed_mean():
    recs = {"x0-align-s0": record(0.88, 0.90, {"a": 0.9, "b": 0.8}), "x0-s0": record(0.87, 0.89, {"a": 0.9, "b": 0.78}),
            "x0-align-s1": record(0.86, 0.88), "x0-s1": record(0.83, 0.86), "v-align-s0": record(0.8, 0.8)}
    text = ablation._paired_section(recs)
    assert "| x0 | 0 | +1.0 | [+0.0, +2.0] | +1.0 |" in text
    assert "| x0 | 1 | +3.0 | n/a (per-image Dice not kept for this pair) | +2.0 |" in text
    assert "| x0, mean ± std over 2 seeds | | +2.0 ± 1.4 | | +1.5 ± 0.7 |" in text
    assert "| v |" not in text  # no unaligned v run to pair with
    assert ablation._paired_section({"x0-s0": record(0.87, 0.89)}) == ""
