"""train.time_budget_min: the step count that fits, the LR schedule stretched to it, and the decision kept on resume."""

import json

import pytest
import torch
from diffusers.optimization import get_scheduler
from omegaconf import OmegaConf

from leafseg.training import budget, handlers, train
from leafseg.training.budget import STEP_SLACK, events_after, step_seconds, steps_in_budget, worth_revising
from leafseg.training.optimisation import retarget_lr_schedule
from tiny import BITWISE, saved_weights, tiny_config


def test_events_after_counts_every_kth_step_and_the_last():
    assert events_after(100, 500, 500) == 1
    assert events_after(100, 8500, 500) == 17
    assert events_after(100, 8550, 500) == 18  # 17 on the 500s + the last step
    assert events_after(500, 500, 500) == 0


def test_steps_in_budget():
    step_s = 0.1 / STEP_SLACK  # timed; the decision counts 0.1 s a step
    # 60 s left, 0.1 s a step, no validations: 600 more steps, a multiple of 100
    assert steps_in_budget(70.0, 10.0, 100, step_s, 0.0, None, cap=10_000) == 700
    assert steps_in_budget(70.0, 10.0, 100, step_s, 0.0, None, cap=650) == 650  # the cap fits: kept as it is
    # validations every 100 steps at 5 s each: N - 100 steps + (N - 100) / 100 validations <= 60 s -> N = 500
    n = steps_in_budget(70.0, 10.0, 100, step_s, 5.0, 100, cap=10_000)
    assert n == 500 and (n - 100) * 0.1 + events_after(100, n, 100) * 5.0 <= 60.0
    assert (n + 100 - 100) * 0.1 + events_after(100, n + 100, 100) * 5.0 > 60.0  # the next multiple does not fit
    assert steps_in_budget(70.0, 69.0, 100, step_s, 5.0, 100, cap=10_000) == 100  # spent: stop where it is
    # the slack: without it 0.1 s a step would give 600 more steps, with it 545 -> 600 in all
    assert STEP_SLACK == 1.10 and steps_in_budget(70.0, 10.0, 100, 0.1, 0.0, None, cap=10_000) == 600


def test_retargeted_schedule_is_the_schedule_of_the_new_length():
    def sched(total):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
        return opt, get_scheduler("cosine", opt, num_warmup_steps=10, num_training_steps=total)

    tc = OmegaConf.create({"lr_schedule": "cosine", "warmup_steps": 10, "max_steps": 1000})
    opt, long = sched(1000)
    ref_opt, short = sched(50)
    for _ in range(10):  # to the end of the warm-up, where the trainer decides
        opt.step(), long.step(), ref_opt.step(), short.step()
    lr_before = opt.param_groups[0]["lr"]
    retarget_lr_schedule(long, tc, 50)
    assert opt.param_groups[0]["lr"] == lr_before == 2.0  # nothing jumps at the decision
    lrs, ref = [], []
    for _ in range(40):
        opt.step(), long.step(), ref_opt.step(), short.step()
        lrs.append(opt.param_groups[0]["lr"]), ref.append(ref_opt.param_groups[0]["lr"])
    assert lrs == ref and lrs[-1] == 0.0


def budget_config(run_dir, data, *extra):
    return tiny_config(run_dir, data, "train.max_steps=12", "train.warmup_steps=10", "train.lr_schedule=cosine",
                       "train.val_every=4", "train.checkpoint_every=4", *extra)


def decide(count):
    """A stand-in for the timing-based decision (the real one depends on this machine's speed)."""
    return lambda budget_s, elapsed_s, step, step_s, validation_s, val_every, cap: min(cap, count)


def test_an_ample_budget_trains_the_fixed_step_run(tmp_path, synthetic, capsys):
    fixed = train(budget_config(tmp_path / "fixed", synthetic, BITWISE))
    capsys.readouterr()
    budgeted = train(budget_config(tmp_path / "budget", synthetic, BITWISE, "train.time_budget_min=600"))
    out = capsys.readouterr().out
    assert "time budget 600 min" in out and "all of them fit, the LR schedule ends at step 12" in out
    assert budgeted.step == fixed.step == 12
    a, b = saved_weights(fixed.run_dir), saved_weights(budgeted.run_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert [h.get("loss") for h in fixed.history if "loss" in h] == [h["loss"] for h in budgeted.history if "loss" in h]
    assert 10 in [h["step"] for h in budgeted.history if "val_dice" in h]  # the timed validation at the decision
    state = json.loads((budgeted.run_dir / "checkpoint-last" / "trainer_state.json").read_text())
    assert state["budget_steps"] == 12
    # model-best's card names the step it holds (exported during that step's validation)
    card = (budgeted.run_dir / "model-best" / "README.md").read_text()
    assert f"- {budgeted.best_step} of 12 steps" in card and f"at step {budgeted.best_step}" in card


def test_a_spent_budget_stops_at_the_end_of_the_warm_up(tmp_path, synthetic, capsys):
    result = train(budget_config(tmp_path / "run", synthetic, "train.time_budget_min=0.0001"))
    assert result.step == 10
    assert "of them fit, the LR schedule ends at step 10" in capsys.readouterr().out
    assert "10 of 10 steps (train.max_steps 12; train.time_budget_min 0.0001 decided 10)" in \
        (result.run_dir / "model-last" / "README.md").read_text()


@pytest.mark.parametrize("interrupted_at", [8, 12])  # before and after the decision at step 10
def test_a_budgeted_run_resumes_with_its_decision(tmp_path, synthetic, monkeypatch, interrupted_at):
    """Interrupted before the decision, the resumed run decides; after it, the resumed run keeps the saved count and
    the LR schedule stretched to it, although its config allows more steps. Either way it ends where and as the
    uninterrupted run does."""
    monkeypatch.setattr(budget, "steps_in_budget", decide(14))
    cfg = ("train.time_budget_min=60", "train.max_steps=16", BITWISE)
    straight = train(budget_config(tmp_path / "a", synthetic, *cfg))
    assert straight.step == 14
    lrs = [h["lr"] for h in straight.history if "lr" in h]
    assert lrs[-1] == 0.0 and lrs[9] == pytest.approx(1e-3)  # the cosine ends at the decided step 14

    real_save = handlers.save_checkpoint

    def save_then_die(accelerator, run_dir, state, *rest):
        real_save(accelerator, run_dir, state, *rest)
        if state["step"] == interrupted_at:
            raise RuntimeError("interrupted")

    monkeypatch.setattr(handlers, "save_checkpoint", save_then_die)
    with pytest.raises(RuntimeError, match="interrupted"):
        train(budget_config(tmp_path / "b", synthetic, *cfg))
    monkeypatch.setattr(handlers, "save_checkpoint", real_save)
    if interrupted_at > 10:  # a second decision would train to 16 steps
        monkeypatch.setattr(budget, "steps_in_budget", decide(16))
    resumed = train(budget_config(tmp_path / "b", synthetic, *cfg), resume=True)
    assert resumed.step == 14
    assert [h["lr"] for h in resumed.history if "lr" in h] == lrs
    a, b = saved_weights(straight.run_dir), saved_weights(resumed.run_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_a_step_is_timed_by_a_median_and_small_revisions_are_noise():
    clean, burst = [0.40] * 40, [3.2] * 15  # another job ran through a quarter of the timed steps
    assert step_seconds(clean + burst) == 0.40
    assert step_seconds([0.3, 0.5]) == 0.4
    assert not worth_revising(1000, 1050) and worth_revising(1000, 1100) and worth_revising(1000, 500)


def test_a_misjudged_warm_up_is_revised_at_the_next_validations(tmp_path, synthetic, monkeypatch, capsys):
    """A warm-up slowed by another job decides too few steps; the next validation in the first half of the
    schedule decides again from every step timed so far and the LR schedule is stretched from where it is."""
    calls = []

    def slow_then_fast(budget_s, elapsed_s, step, step_s, validation_s, val_every, cap):
        calls.append(step)
        return 30 if len(calls) == 1 else cap

    monkeypatch.setattr(budget, "steps_in_budget", slow_then_fast)
    result = train(budget_config(tmp_path / "run", synthetic, "train.time_budget_min=60", "train.max_steps=40",
                                 "train.val_every=2"))
    out = capsys.readouterr().out
    assert calls[:2] == [10, 12]  # decided at the end of the warm-up, revised at the next validation
    assert "time budget revised at step 12" in out and "now ends at step 40 instead of 30" in out
    assert result.step == 40
    assert calls == [10, 12, 14, 16, 18, 20]  # then checked at each validation up to half of the 40 steps
    lrs = [h["lr"] for h in result.history if "lr" in h]
    assert lrs[-1] == 0.0 and min(lrs[:-1]) > 0.0  # the cosine ends at the revised count, not before
    vals = [h["step"] for h in result.history if "val_dice" in h]
    assert len(vals) == len(set(vals))  # a revision's validation is the step's only one
    state = json.loads((result.run_dir / "checkpoint-last" / "trainer_state.json").read_text())
    assert state["budget_steps"] == 40


def test_a_budget_the_warm_up_cannot_end_inside_is_refused_early(tmp_path, synthetic):
    with pytest.raises(ValueError, match=r"train.warmup_steps=100000\) would end after .* lower train.warmup_steps"):
        train(budget_config(tmp_path / "run", synthetic, "train.time_budget_min=1", "train.warmup_steps=100000",
                            "train.max_steps=200000"))
    state = json.loads((tmp_path / "run" / "checkpoint-last" / "trainer_state.json").read_text()) \
        if (tmp_path / "run" / "checkpoint-last").exists() else {"step": 0}
    assert state["step"] <= 10  # refused after the ten steps that time it


def test_budget_config_errors(tmp_path, synthetic):
    with pytest.raises(ValueError, match="warmup_steps >= 10"):
        train(tiny_config(tmp_path / "a", synthetic, "train.time_budget_min=5"))
    with pytest.raises(ValueError, match="positive number of minutes"):
        train(budget_config(tmp_path / "b", synthetic, "train.time_budget_min=-1"))
