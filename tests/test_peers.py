"""The MONAI peer networks (DynUNet in nnU-Net's 2D topology, BasicUNet) as leafseg models and training methods."""

import math

import numpy as np
import pytest
import torch

from leafseg.evaluation import evaluate
from leafseg.models.monai_nets import MonaiSegmenter, nnunet_2d_topology
from leafseg.pipelines import MonaiSegPipeline, load_pipeline
from leafseg.training import train
from leafseg.training.peers import deep_supervision_weights, dice_ce_loss
from tiny import tiny_config

TINY = {"dynunet": {"base_features": 4, "max_features": 16},
        "basicunet": {"features": [4, 4, 8, 8, 16, 4]}}


def tiny_segmenter(architecture: str, deep_supervision: bool = False, seed: int = 0) -> MonaiSegmenter:
    torch.manual_seed(seed)
    return MonaiSegmenter(architecture, 32, deep_supervision=deep_supervision, network=TINY[architecture]).eval()


def test_nnunet_2d_topology_follows_the_planner():
    # nnU-Net v2's 2D plan for a 128 px patch: 6 stages, the bottom at 4 px, features 32 doubling to a cap of 512
    plan = nnunet_2d_topology(128)
    assert plan["strides"] == [1, 2, 2, 2, 2, 2] and plan["upsample_kernel_size"] == [2, 2, 2, 2, 2]
    assert plan["filters"] == [32, 64, 128, 256, 512, 512] and plan["kernel_size"] == [3] * 6
    assert nnunet_2d_topology(256)["filters"] == [32, 64, 128, 256, 512, 512, 512]
    assert nnunet_2d_topology(32)["strides"] == [1, 2, 2, 2]
    assert nnunet_2d_topology(96)["strides"] == [1, 2, 2, 2, 2]  # 96 -> 48 -> 24 -> 12 -> 6
    with pytest.raises(ValueError, match="at least 8"):
        nnunet_2d_topology(4)


def test_deep_supervision_weights_are_nnunets():
    # nnU-Net: 1, 1/2, 1/4, 1/8, 0 over five heads, normalised; leafseg uses the four that carry weight
    assert deep_supervision_weights(4) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    assert deep_supervision_weights(1) == [1.0]


def test_dice_ce_loss_hand_computed():
    logits = torch.zeros(2, 2, 2, 2)  # p = 0.5 for both classes everywhere
    target = torch.zeros(2, 1, 2, 2, dtype=torch.long)
    target[0, 0, 0, 0] = 1  # one foreground pixel in the batch of 8
    smooth = 1e-5
    batch_dice = 1 - (2 * 0.5 + smooth) / (0.5 * 8 + 1 + smooth)
    torch.testing.assert_close(dice_ce_loss()(logits, target), torch.tensor(batch_dice + math.log(2)))
    torch.testing.assert_close(dice_ce_loss(dice_weight=0.0)(logits, target), torch.tensor(math.log(2)))


@pytest.mark.parametrize("architecture", ["dynunet", "basicunet"])
def test_segmenter_shapes_and_intensity_invariance(architecture):
    net = tiny_segmenter(architecture)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = net(x)
    assert out.shape == (2, 2, 32, 32)
    # z-scored input: a change of contrast and brightness gives the same logits
    torch.testing.assert_close(net(0.5 * x + 0.2), out, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="multiples of"):
        net(torch.zeros(1, 3, 30, 30))


def test_dynunet_deep_supervision_heads_in_training_only():
    net = tiny_segmenter("dynunet", deep_supervision=True).train()
    out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 3, 2, 32, 32)  # 32 px: 4 stages, the full-size output and 2 lower heads
    assert net.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 2, 32, 32)
    with pytest.raises(ValueError, match="DynUNet option"):
        MonaiSegmenter("basicunet", 32, deep_supervision=True)
    with pytest.raises(ValueError, match="architecture must be"):
        MonaiSegmenter("segformer", 32)


def test_dynunet_expected_slice():
    # pins the numerics of the tiny DynUNet (seed 0): a refactor must not change them silently
    net = tiny_segmenter("dynunet")
    x = torch.linspace(-1, 1, 3 * 32 * 32).reshape(1, 3, 32, 32)
    with torch.no_grad():
        got = net(x)[0, 1, 16, 10:14]
    torch.testing.assert_close(got, torch.tensor(EXPECTED_DYNUNET), atol=1e-4, rtol=0)


EXPECTED_DYNUNET = [0.10622, 0.11607, 0.09750, 0.19738]


@pytest.mark.parametrize("architecture", ["dynunet", "basicunet"])
def test_pipeline_round_trip_and_onnx(tmp_path, architecture):
    from leafseg.pipelines.onnx import export_onnx

    pipe = MonaiSegPipeline(network=tiny_segmenter(architecture))
    images = [np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
              for i, (h, w) in enumerate([(20, 30), (32, 32)])]
    out = pipe(images)
    assert [m.shape for m in out.masks] == [(20, 30), (32, 32)] and out.uncertainty is None
    pipe.save_pretrained(tmp_path / "m")
    again = load_pipeline(str(tmp_path / "m"), "cpu")
    assert isinstance(again, MonaiSegPipeline) and again.network.config.architecture == architecture
    np.testing.assert_allclose(again(images).probabilities[0], out.probabilities[0], atol=1e-6)
    with pytest.raises(ValueError, match="deterministic"):
        pipe(images, ensemble_size=2)
    export_onnx(again, tmp_path / "onnx")
    onnx = load_pipeline(str(tmp_path / "onnx"))
    np.testing.assert_allclose(onnx(images).probabilities[0], out.probabilities[0], atol=1e-4)
    tta = pipe(images, flip_tta=True).probabilities  # the same flip views and merge on both backends
    assert not np.allclose(tta[1], out.probabilities[1], atol=1e-4)
    np.testing.assert_allclose(onnx(images, flip_tta=True).probabilities[1], tta[1], atol=1e-4)


@pytest.mark.parametrize("architecture", ["dynunet", "basicunet"])
def test_peer_trains_resumes_and_evaluates(tmp_path, synthetic, architecture):
    options = [f"peers.{architecture}.{k}={str(v).replace(' ', '')}" for k, v in TINY[architecture].items()]
    cfg = tiny_config(tmp_path / "run", synthetic, f"method={architecture}", "train.max_steps=4", *options)
    result = train(cfg)
    assert result.step == 4 and result.best_step in (2, 4)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 4 and all(np.isfinite(losses))
    card = (tmp_path / "run" / "model-best" / "README.md").read_text()
    assert ("DynUNet" if architecture == "dynunet" else "BasicUNet") in card
    resumed = train(tiny_config(tmp_path / "run", synthetic, f"method={architecture}", "train.max_steps=5",
                                *options), resume=True)
    assert resumed.step == 5
    ev = evaluate(str(tmp_path / "run" / "model-best"), str(synthetic), "test", None, str(tmp_path / "ev"))
    assert ev["summary"]["inference"]["pipeline"] == "MonaiSegPipeline"
