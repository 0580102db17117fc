"""benchmarks/step_profile.py keeps running: a real (tiny) training timed phase by phase, and left as it was."""

import importlib.util
from pathlib import Path

import pytest

from tiny import BITWISE, tiny_config

spec = importlib.util.spec_from_file_location("step_profile", Path(__file__).parents[1] / "benchmarks" /
                                              "step_profile.py")
step_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(step_profile)


def test_a_tiny_run_is_timed_phase_by_phase(tmp_path, synthetic, capsys):
    from leafseg.training import engine

    loader, after_step = engine.train_loader, engine.Trainer.after_step
    cfg = tiny_config(tmp_path / "unused", synthetic, BITWISE)
    r = step_profile.profile(cfg, steps=3, skip=1, torch_profile=1, output_dir=tmp_path / "run")
    phases = r["phases_step_s"]
    assert {"data", "forward", "backward", "clip", "adamw", "ema", "bookkeeping", "loop other"} <= set(phases)
    assert all(v >= 0 for k, v in phases.items() if k != "loop other")
    assert sum(phases.values()) == pytest.approx(r["phased_mean_s"])  # exclusive times add up to the step
    assert r["plain_step_s"]["median"] > 0 and r["steps"] == 3 and "aten::" in r["torch_profile"]["table"]
    # the run finished and checkpointed (a wrapper left on the LR scheduler would not have serialised) ...
    state = tmp_path / "run" / "checkpoint-last" / "trainer_state.json"
    assert state.is_file() and '"step": 8' in state.read_text()  # 1 + 2 x 3 + 1 + 1
    # ... and the engine is as it was
    assert engine.train_loader is loader and engine.Trainer.after_step is after_step
    step_profile.print_report(r)
    assert "| forward |" in capsys.readouterr().out
