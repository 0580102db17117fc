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
    assert r["device"] == "cpu" and r["batch"] == 2 and r["resolution"] == 128 and r["max_steps"] == 8500  # cpu.yaml
    assert 0 < r["step_s"] < 60 and math.isfinite(r["infer_img_per_s"]) and r["peak_gpu_gib"] is None
    assert 5 < r["unet_mparams"] < 7  # the cpu recipe's UNet (64, 128, 128)


def test_overrides_reach_the_timed_networks(taef2_dir, monkeypatch):
    """--set times a recipe choice: the override is in the built config and in the networks the step trains."""
    monkeypatch.setattr(train_speed, "SHARED", taef2_dir.parents[1])
    cfg, encoder, *_ = train_speed.build("laptop", ["image_encoder.frozen_layers=6", "train.max_steps=4500"])
    assert cfg.image_encoder.frozen_layers == 6 and cfg.train.max_steps == 4500
    frozen = [not any(p.requires_grad for p in layer.parameters()) for layer in encoder.leading_layers()]
    assert frozen[:6] == [True] * 6 and not frozen[6]
