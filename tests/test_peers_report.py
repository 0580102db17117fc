"""The peers comparison (benchmarks/peers/compare.py): each training source's commands, records and table, with the
paired differences against LEAF, and the hand-written reading kept when the report is rebuilt."""

import importlib.util
import json
import sys
from argparse import Namespace
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # compare.py imports run_records.py from there
spec = importlib.util.spec_from_file_location("compare", BENCHMARKS / "peers" / "compare.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def fake_run_logged(commands):
    """Stands in for the real commands: writes what `leafseg train` / `leafseg evaluate` would leave behind."""
    def run(cmd, log):
        commands.append(cmd)
        out = Path(cmd[cmd.index("--output") + 1])
        if cmd[1] == "train":
            (out / "checkpoint-last").mkdir(parents=True)
            (out / "checkpoint-last" / "trainer_state.json").write_text(
                json.dumps({"step": 700, "best_val_dice": 0.8, "best_step": 500}))
        else:
            out.mkdir(parents=True)
            stat = {"mean": 0.7, "ci_low": 0.6, "ci_high": 0.8}
            (out / "summary.json").write_text(json.dumps({"metrics": {"dice": stat, "iou": stat, "hd95": stat}}))
            (out / "per_image.csv").write_text("name,dice,iou\na,0.7,0.6\nb,0.7,0.6\n")
        return 1.0
    return run


def test_training_on_kvasir_evaluates_its_test_split_and_all_of_cvc(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(compare, "run_logged", fake_run_logged(commands))
    records = tmp_path / "records" / "15min-kvasir"
    compare.run_method("basicunet", Namespace(budget_min=15.0, train_on="kvasir"), tmp_path / "runs", records)
    train, *evals = commands
    assert "data.layout=kvasir-seg" in train and "method=basicunet" in train and "train.time_budget_min=15.0" in train
    assert any(a.startswith("data.split_file=") and a.endswith("kvasir-seg.json") for a in train)
    assert [(c[c.index("--layout") + 1], c[c.index("--split") + 1]) for c in evals] == [("kvasir-seg", "test"),
                                                                                         ("cvc-clinicdb", "all")]
    assert "--split-file" in evals[0] and "--split-file" not in evals[1]  # "all": every frame of the other centre
    record = json.loads((records / "basicunet.json").read_text())
    assert record["train_on"] == "kvasir" and record["steps"] == 700
    assert set(record["sets"]) == {"kvasir_test", "cvc_all"}


def record(method, sets, train_on):
    per_image = {"a": 0.9, "b": 0.8} if method == "leaf" else {"a": 0.85, "b": 0.75}
    dice = sum(per_image.values()) / 2
    return {"method": method, "label": compare.METHODS[method][0], "steps": 100, "best_val_dice": 0.8,
            "train_on": train_on, "train_cmd": f"train {method} on {train_on}", "machine": "CPU A",
            "sets": {s: {"dice": {"mean": dice, "ci_low": dice - 0.1, "ci_high": dice + 0.1},
                         "per_image_dice": per_image, "eval_cmd": f"evaluate {s}"} for s in sets}}


def test_report_has_a_table_per_training_source_and_keeps_the_reading(tmp_path):
    root, report = tmp_path / "peers", tmp_path / "peers.md"
    for source, suffix in (("cvc", ""), ("kvasir", "-kvasir")):
        folder = root / f"15min{suffix}"
        folder.mkdir(parents=True)
        for method in ("leaf", "basicunet"):
            sets = compare.SOURCES[source][3]
            (folder / f"{method}.json").write_text(json.dumps(record(method, sets, source)))
    report.write_text("old table\n" + compare.MARKER + "\n\nThe reading, by hand.\n")
    compare.write_report(root, report, 15.0)
    text = report.read_text()
    cvc, kvasir = text.split("## Trained on CVC-ClinicDB")[1].split("## Trained on Kvasir-SEG")
    assert "| CVC-ClinicDB test (vs LEAF) | Kvasir-SEG all 1000 (vs LEAF) |" in cvc
    assert "| Kvasir-SEG test (vs LEAF) | CVC-ClinicDB all 612 (vs LEAF) |" in kvasir
    # BasicUNet is 5 points below LEAF on both images of each set: no spread in the paired bootstrap
    row = "| MONAI BasicUNet (Dice + CE) | 100 | 0.800 | 0.800 [0.700, 0.900] (-5.0 [-5.0, -5.0]) | " \
          "0.800 [0.700, 0.900] (-5.0 [-5.0, -5.0]) |"
    assert row in cvc and row in kvasir
    assert "| MONAI DynUNet, nnU-Net 2D topology (Dice + CE, deep supervision) | not run |" in kvasir
    assert "train basicunet on kvasir" in text and "evaluate cvc_all" in text
    assert "old table" not in text and text.rstrip().endswith("The reading, by hand.")


def test_a_source_without_records_gets_no_section(tmp_path):
    (tmp_path / "peers" / "15min").mkdir(parents=True)
    compare.write_report(tmp_path / "peers", tmp_path / "peers.md", 15.0)
    text = (tmp_path / "peers.md").read_text()
    assert "## Trained on CVC-ClinicDB" in text and "Kvasir-SEG test" not in text


def test_a_set_left_unpredicted_shows_why_in_its_cell(tmp_path):
    root, report = tmp_path / "peers", tmp_path / "peers.md"
    folder = root / "15min-kvasir"
    folder.mkdir(parents=True)
    (folder / "leaf.json").write_text(json.dumps(record("leaf", ["kvasir_test", "cvc_all"], "kvasir")))
    nnunet = record("leaf", ["kvasir_test"], "kvasir") | {"method": "nnunet", "label": "nnU-Net v2 2D",
                                                           "not_run": {"cvc_all": "too slow here"}}
    (folder / "nnunet.json").write_text(json.dumps(nnunet))
    report.write_text(compare.MARKER + "\n")
    compare.write_report(root, report, 15.0)
    row = next(line for line in report.read_text().splitlines() if line.startswith("| nnU-Net v2 2D |"))
    assert row.endswith("| not run: too slow here |")
    assert "0.850 [0.750, 0.950] (+0.0 [+0.0, +0.0])" in row  # the set it did predict, against LEAF as usual
