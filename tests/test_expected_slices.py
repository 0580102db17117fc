"""Expected slices: a few output numbers of the tiny models, written down once, so that a refactor cannot change
results silently (as diffusers' pipeline tests do). If one of these fails, the numerics changed: find out why
before updating a number, and say why in the commit.

The folders under ``fixtures/pre-move-*`` were saved by leafseg before the package was re-laid out (issue 9, commit
of this file); they must keep loading, with the same outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from leafseg import metrics as M
from tiny import tiny_config, tiny_pipeline

FIXTURES = Path(__file__).parent / "fixtures"


def _image() -> torch.Tensor:
    return torch.rand(3, 40, 24, generator=torch.Generator().manual_seed(0))


def _slice(probabilities: np.ndarray) -> np.ndarray:
    return probabilities[::10, ::6].ravel()


PIPELINE_SLICES = {  # default scheduler (the authors': linear betas, x0 clamp), seed 0
    "sample": [0.511407, 0.547943, 0.5361, 0.498698, 0.484591, 0.397958, 0.336754, 0.50611, 0.496424, 0.470655,
               0.408977, 0.637843, 0.540638, 0.471714, 0.418217, 0.502193],
    "epsilon": [0.510551, 0.420553, 0.484785, 0.49441, 0.563722, 0.490559, 0.317884, 0.407097, 0.527098, 0.427692,
                0.52967, 0.376265, 0.498289, 0.482969, 0.362795, 0.4881],
    "v_prediction": [0.505549, 0.522552, 0.50823, 0.527458, 0.44296, 0.517506, 0.436152, 0.385863, 0.415403, 0.502894,
                     0.638871, 0.427824, 0.539294, 0.457639, 0.387903, 0.571013],
}


@pytest.mark.parametrize("kind", sorted(PIPELINE_SLICES))
def test_pipeline_slice(kind):
    out = tiny_pipeline(kind)(_image(), seed=0)
    np.testing.assert_allclose(_slice(out.probabilities[0]), PIPELINE_SLICES[kind], atol=1e-4)


def test_training_step_losses(tmp_path, synthetic):
    from leafseg.training import train

    # run.device=cpu: the pinned numbers are the CPU's (on a GPU, cuDNN's TF32 convolutions move them by ~1e-2)
    result = train(tiny_config(tmp_path / "run", synthetic, "train.max_steps=2", "train.val_every=100",
                               "run.device=cpu"))
    logged = [(h["loss"], h["loss_main"], h["loss_align"]) for h in result.history if "loss" in h]
    np.testing.assert_allclose(logged, TRAINING_LOSSES, rtol=1e-4)


def test_supervised_training_step_loss(tmp_path, synthetic):
    from leafseg.training import train

    cfg = tiny_config(tmp_path / "run", synthetic, "method=supervised_unet", "run.device=cpu", "train.max_steps=2",
                      "train.val_every=100",
                      "baseline.unet.block_out_channels=[8,16]", "baseline.unet.layers_per_block=1",
                      "baseline.unet.norm_num_groups=4", "baseline.unet.attention_head_dim=8")
    logged = [h["loss"] for h in train(cfg).history if "loss" in h]
    np.testing.assert_allclose(logged, SUPERVISED_LOSSES, rtol=1e-4)


def test_metrics_on_a_fixed_pair():
    rng = np.random.default_rng(0)
    pred = np.zeros((32, 32), bool)
    gt = np.zeros((32, 32), bool)
    pred[4:20, 6:22] = True
    gt[8:26, 4:18] = True
    pred |= rng.random((32, 32)) > 0.97
    values = [M.dice(pred, gt), M.iou(pred, gt), M.precision(pred, gt), M.recall(pred, gt), M.specificity(pred, gt),
              M.hd95(pred, gt), M.assd(pred, gt), M.hd95(pred, gt, spacing=(0.5, 2.0)), M.paper_dice(pred, gt)]
    np.testing.assert_allclose(values, METRIC_VALUES, rtol=1e-6)


@pytest.mark.parametrize("name", ["pre-move-leaf-model", "pre-move-supervised-model"])
def test_models_saved_before_the_move_still_load(name):
    from leafseg.pipelines import load_pipeline

    pipe = load_pipeline(str(FIXTURES / name), "cpu")
    probabilities = pipe(_image(), seed=0).probabilities[0]
    np.testing.assert_allclose(_slice(probabilities), PRE_MOVE_SLICES[name], atol=1e-5)


# recorded with the pre-move code (see the module docstring)
PRE_MOVE_SLICES = {
    "pre-move-leaf-model": [0.527555, 0.561955, 0.448768, 0.540219, 0.46526, 0.467725, 0.24603, 0.514939, 0.534101,
                            0.392788, 0.468161, 0.546963, 0.572322, 0.512042, 0.441543, 0.505993],
    "pre-move-supervised-model": [0.508579, 0.507287, 0.566865, 0.559905, 0.570286, 0.606001, 0.593986, 0.620207,
                                  0.542126, 0.591676, 0.567908, 0.602952, 0.552589, 0.567252, 0.622266, 0.501549],
}
# (loss, loss_main, loss_align) of steps 1 and 2 of the tiny LEAF run
TRAINING_LOSSES = [(0.157114, 0.242305, -0.113587), (0.13911, 0.223603, -0.112657)]
SUPERVISED_LOSSES = [1.531347, 1.542804]
# dice, iou, precision, recall, specificity, hd95, assd, hd95 at spacing (0.5, 2), paper_dice
METRIC_VALUES = [0.5478424015009381, 0.3772609819121447, 0.5195729537366548, 0.5793650793650794, 0.8251295336787565,
                 12.729783085258351, 3.9447842191750846, 23.80056810846652, 0.5478424015009381]
