"""The supervised UNet baseline: loss values, shapes, save/load, and a short real training run."""

import math

import numpy as np
import pytest
import torch

from leafseg.pipelines.supervised import SupervisedSegPipeline, build_segmentation_unet
from leafseg.training.supervised import dice_bce_loss
from leafseg.evaluation import evaluate
from leafseg.pipelines import load_pipeline
from leafseg.training import train
from tiny import tiny_config

TINY = {"block_out_channels": [8, 16], "layers_per_block": 1, "attention_levels": 1, "norm_num_groups": 4,
        "attention_head_dim": 8}


def test_dice_bce_loss_hand_computed():
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])  # p = 0.5 everywhere
    target = torch.tensor([[[1, 0], [0, 0]]])
    smooth = 1e-5
    soft_dice = 1 - (2 * 0.5 + smooth) / (2.0 + 1 + smooth)
    bce = math.log(2)  # -log(0.5) for every pixel
    torch.testing.assert_close(dice_bce_loss(logits, target), torch.tensor(soft_dice + bce))
    torch.testing.assert_close(dice_bce_loss(logits, target, dice_weight=0.0), torch.tensor(bce))
    perfect = torch.tensor([[[20.0, -20.0], [-20.0, -20.0]]])
    assert dice_bce_loss(perfect, target).item() < 1e-6 + 1e-5


def test_pipeline_shapes_and_round_trip(tmp_path):
    torch.manual_seed(0)
    pipe = SupervisedSegPipeline(unet=build_segmentation_unet(16, **TINY))
    images = [np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
              for i, (h, w) in enumerate([(20, 30), (16, 16)])]
    out = pipe(images)
    assert [m.shape for m in out.masks] == [(20, 30), (16, 16)] and out.uncertainty is None
    pipe.save_pretrained(tmp_path / "m")
    again = load_pipeline(str(tmp_path / "m"), "cpu")
    assert isinstance(again, SupervisedSegPipeline)
    np.testing.assert_allclose(again(images).probabilities[0], out.probabilities[0], atol=1e-6)
    with pytest.raises(ValueError, match="deterministic"):
        pipe(images, ensemble_size=2)


def test_supervised_training_selects_on_val_and_evaluates(tmp_path, synthetic):
    cfg = tiny_config(tmp_path / "run", synthetic, "method=supervised_unet", "train.max_steps=6",
                      "train.val_every=3", "train.checkpoint_every=3",
                      *[f"baseline.unet.{k}={str(v).replace(' ', '')}" for k, v in TINY.items()])
    result = train(cfg)
    assert result.step == 6 and result.best_step in (3, 6)
    assert (tmp_path / "run" / "model-best" / "model_index.json").exists()
    assert (tmp_path / "run" / "logs" / "curves.png").stat().st_size > 1000
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 6 and all(np.isfinite(losses))
    resumed = train(tiny_config(tmp_path / "run", synthetic, "method=supervised_unet", "train.max_steps=7",
                                "train.val_every=3", "train.checkpoint_every=3",
                                *[f"baseline.unet.{k}={str(v).replace(' ', '')}" for k, v in TINY.items()]),
                    resume=True)
    assert resumed.step == 7
    ev = evaluate(str(tmp_path / "run" / "model-best"), str(synthetic), "test", None, str(tmp_path / "ev"))
    assert ev["summary"]["inference"]["pipeline"] == "SupervisedSegPipeline"
    assert ev["summary"]["n_images"] == 6
