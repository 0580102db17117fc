"""benchmarks/train_speed.py keeps running: one timed training step of the `cpu` recipe's networks on the CPU."""

import importlib.util
import math
from pathlib import Path

spec = importlib.util.spec_from_file_location("train_speed", Path(__file__).parents[1] / "benchmarks" /
                                              "train_speed.py")
train_speed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_speed)


def test_one_laptop_step_on_the_cpu(taef2_dir, monkeypatch):
    monkeypatch.setattr(train_speed, "SHARED", taef2_dir.parents[1])
    r = train_speed.measure("laptop", "no", "cpu", steps=1, warmup=0, batch=2)
    assert r["device"] == "cpu" and r["batch"] == 2 and r["resolution"] == 128 and r["max_steps"] == 3600
    assert 0 < r["step_s"] < 60 and math.isfinite(r["infer_img_per_s"]) and r["peak_gpu_gib"] is None
    assert 5 < r["unet_mparams"] < 7  # the cpu recipe's UNet (64, 128, 128)
