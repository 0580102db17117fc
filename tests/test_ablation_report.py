"""The ablation report's paired statistics (experiments/ablation/ablation.py): per-image Dice kept in a record, the
paired bootstrap CI of alignment on minus off, and the per-seed table."""

import importlib.util
import json
import re
from argparse import Namespace
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "experiments" / "ablation" / "ablation.py"
spec = importlib.util.spec_from_file_location("ablation", SCRIPT)
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


def test_per_image_dice_reads_the_evaluation_csv(tmp_path):
    csv_file = tmp_path / "per_image.csv"
    csv_file.write_text("name,dice,iou\n2,0.9659307976884204,0.93\n15,nan,nan\n")
    assert ablation.per_image_dice(csv_file) == {"2": 0.965931, "15": None}


def test_paired_bootstrap_ci_of_the_mean_difference():
    off = {str(i): 0.5 + 0.01 * i for i in range(40)}
    shifted = {k: v + 0.1 for k, v in off.items()}
    lo, hi = ablation.paired_bootstrap(shifted, off)  # the same shift on every image: no spread at all
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    noisy = {k: v + (0.2 if int(k) % 2 else 0.0) for k, v in off.items()}  # mean +0.1, half the images moved
    lo, hi = ablation.paired_bootstrap({**noisy, "x": None}, {**off, "x": 0.3})  # unscored images left out
    assert 0.04 < lo < 0.1 < hi < 0.16
    assert ablation.paired_bootstrap(noisy, off) == (lo, hi)  # fixed seed: the report is reproducible


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


def test_baseline_section_pairs_leaf_with_the_unet_of_its_seed():
    unet = {**record(0.84, 0.85, {"a": 0.86, "b": 0.82}), "variant": "unet", "seed": 0}
    leaf = {**record(0.88, 0.90, {"a": 0.9, "b": 0.86}), "variant": "x0-align", "seed": 0}
    text = ablation._baseline_section({"unet-s0": unet, "x0-align-s0": leaf})
    assert "| 0 | +4.0 | [+4.0, +4.0] | +5.0 |" in text  # +0.04 on both images: no spread
    assert ablation._baseline_section({"unet-s0": unet}) == ""  # no LEAF run of that seed yet


def test_runs_go_pair_by_pair_and_cover_the_ablation():
    names = list(ablation.RUNS)
    assert names[:6] == ["x0-align-s0", "x0-s0", "x0-align-s1", "x0-s1", "x0-align-s2", "x0-s2"]  # pairs first
    assert len(names) == 11 and names[6:] == ["v-align-s0", "v-s0", "eps-align-s0", "eps-s0", "unet-s0"]


def full_record(name, dice, val, machine="CPU A"):
    variant, seed = ablation.RUNS[name]
    stat = {"mean": dice, "ci_low": dice - 0.03, "ci_high": dice + 0.03}
    return {"run": name, "variant": variant, "label": ablation.VARIANTS[variant][0], "seed": seed,
            "steps": 3600, "best_val_dice": val, "best_step": 3600, "machine": machine,
            "test": {"dice": stat, "iou": {"mean": dice - 0.05}, "hd95": {"mean": 12.0},
                     "paper_compatible": {"dice": dice}},
            "train_s": 1300.0, "eval_s": 20.0, "train_cmd": f"leafseg train {name}", "eval_cmd": "leafseg evaluate"}


def test_partial_report_says_what_is_missing_and_keeps_the_analysis(tmp_path):
    records, results = tmp_path / "records", tmp_path / "results.md"
    records.mkdir()
    for name, dice, val, cpu in (("x0-align-s0", 0.89, 0.90, "CPU A"), ("x0-s0", 0.88, 0.89, "CPU B")):
        rec = full_record(name, dice, val, cpu) | ({"commit": "abc1234"} if name == "x0-s0" else {})
        (records / f"{name}.json").write_text(json.dumps(rec))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a"] * 3, "val": ["b"], "test": ["c"] * 2}))
    args = Namespace(recipe="cpu", steps=None, split_file=str(split))
    results.write_text("old tables\n" + ablation.MARKER + "\n\nhand-written analysis\n")
    ablation.write_report(records, results, args)
    text = results.read_text()
    assert "Runs recorded: 2 of 11" in text
    # records of an earlier budget than the recipe's present one (cpu.yaml went from 3600 to 8500 steps): said
    assert ("at 3600 steps (not the recipe's present train.max_steps 8500, which came after these runs; "
            "`--steps 3600` re-runs them)") in text
    assert "Machine(s): CPU A; CPU B." in text  # runs from two machines: both named
    assert "| x0 + alignment (LEAF) | 0 | 89.0 [86.0, 92.0] |" in text
    assert text.count("| not run yet |") == 9 + 5  # 9 runs in the per-run table, 5 variants in the summary
    assert "| x0 | 0 | +1.0 |" in text and "old tables" not in text
    assert "# x0-s0 (commit abc1234)\nleafseg train x0-s0" in text and "# x0-align-s0 (commit unknown)" in text
    assert text.rstrip().endswith("hand-written analysis")


def test_a_resumed_run_shows_its_own_summed_clock_marked(tmp_path):
    """The script's clock of an interrupted process is lost; the training's timings.json sums every process."""
    records, results = tmp_path / "records", tmp_path / "results.md"
    records.mkdir()
    resumed = full_record("x0-s0", 0.88, 0.89) | {"train_s": 1680.0, "train_timings": {
        "total_s": 3552.0, "segments": [{"total_s": 1881.0}, {"total_s": 1671.0}]}}
    (records / "x0-s0.json").write_text(json.dumps(resumed))
    (records / "x0-align-s0.json").write_text(json.dumps(full_record("x0-align-s0", 0.89, 0.90) | {
        "train_timings": {"total_s": 1290.0, "segments": [{"total_s": 1290.0}]}}))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a"], "val": ["b"], "test": ["c"]}))
    ablation.write_report(records, results, Namespace(recipe="cpu", steps=None, split_file=str(split)))
    text = results.read_text()
    assert "| 59* + 0.3 |" in text and "| 22 + 0.3 |" in text  # resumed: 3552 s summed; single process: train_s
    assert "* interrupted and resumed: the training's own clock summed over its processes" in text


def test_rebuild_command_names_non_default_folders(tmp_path):
    args = Namespace(recipe="cpu")
    default = ablation.HERE / "records-8500", ablation.HERE / "README.md"
    assert ablation._rebuild_command(args, *default) == (
        ".venv/bin/python experiments/ablation/ablation.py --report-only")
    other = ablation.HERE / "records-3600", ablation.HERE / "results-3600.md"
    assert ablation._rebuild_command(args, *other) == (
        ".venv/bin/python experiments/ablation/ablation.py --report-only --records experiments/ablation/records-3600 "
        "--results experiments/ablation/results-3600.md")


def test_budget_words():
    assert ablation._budget_words(Namespace(recipe="cpu", steps=None), {8500}) == ", its full budget"
    assert ablation._budget_words(Namespace(recipe="cpu", steps=400), {400}) == " (--steps 400)"


def test_commit_names_the_checkout():
    assert re.fullmatch(r"[0-9a-f]{7,}(\+changes)?|unknown \(not a git checkout\)", ablation.commit())
