"""Two-process data-parallel training on the CPU (gloo) through `accelerate launch`."""

import json
import os
import subprocess
import sys

import pytest
import torch

from leafseg.demo import make_synthetic_dataset
from tiny import TINY_AE, TINY_UNET

pytestmark = pytest.mark.slow


def train_on_two_ranks(tmp_path, *train_overrides):
    """`accelerate launch` of a tiny LEAF training on two CPU processes; returns the finished process and run folder."""
    data = make_synthetic_dataset(tmp_path / "data", n=24, size=32, seed=2)
    run = tmp_path / "run"
    overrides = [
        f"run.output_dir={run}", f"data.root={data}", "data.resolution=32",
        "data.split.train=0.5", "data.split.val=0.25", "data.split.test=0.25",
        "autoencoder.kind=kl", f"autoencoder.config={json.dumps(TINY_AE).replace(' ', '')}",
        *[f"unet.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY_UNET.items()],
        "align.projector_dim=32", "align.teacher_image_size=32", "train.batch_size=2", "train.lr=1e-3",
        "train.log_every=1", "train.mixed_precision=no", "train.log_samples=true", "train.num_threads=1",
        "run.device=cpu",  # two CPU processes over gloo, also on a machine with one GPU
        *train_overrides,
    ]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "leafseg.cli", "train", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc, run


def test_two_ranks_stay_in_sync_and_read_different_shards(tmp_path):
    _, run = train_on_two_ranks(tmp_path, "train.max_steps=6", "train.warmup_steps=2", "train.val_every=3",
                                "train.checkpoint_every=3")

    seen = [json.loads((run / "logs" / f"samples-rank{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 12  # 6 steps x batch 2 per rank
    for step in range(6):  # within every global batch the two ranks read different images
        assert not set(seen[0][2 * step:2 * step + 2]) & set(seen[1][2 * step:2 * step + 2])
    assert set(seen[0]) != set(seen[1])

    # DDP keeps the replicas identical: every rank's saved model state must agree
    states = [torch.load(run / "logs" / f"final-weights-rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=0, msg=k)
    # and they are what rank 0 exported (EMA aside, the raw UNet is in the checkpoint)
    assert any(k.startswith("unet.") for k in states[0])


def test_two_ranks_stop_together_at_the_budget_decision(tmp_path):
    """train.time_budget_min with two processes: rank 0 times a validation that the other rank waits for, and both
    stop at the count rank 0 broadcasts (here the warm-up's end: the budget is spent by then)."""
    proc, run = train_on_two_ranks(tmp_path, "train.max_steps=14", "train.warmup_steps=10",
                                   "train.lr_schedule=cosine", "train.time_budget_min=0.0001", "train.val_every=5",
                                   "train.checkpoint_every=5")
    assert "the LR schedule ends at step 10" in proc.stdout + proc.stderr
    seen = [json.loads((run / "logs" / f"samples-rank{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 20  # 10 steps x batch 2 on each rank
    state = json.loads((run / "checkpoint-last" / "trainer_state.json").read_text())
    assert state["step"] == state["budget_steps"] == 10
