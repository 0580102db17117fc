"""Colour jitter of training images (data.colour_jitter): kornia's ColorJitter, seeded from the step's generator."""

import importlib.util
import sys

import pytest
import torch

from leafseg.config import load_config
from leafseg.data import ColourJitter
from leafseg.training import train
from tiny import tiny_config

needs_kornia = pytest.mark.skipif(importlib.util.find_spec("kornia") is None,
                                  reason="kornia not installed (pip install 'leafseg[augment]')")


def images(n=4, seed=0):
    return (torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)


def test_off_is_the_identity_and_draws_nothing():  # and needs no kornia
    x, g = images(), torch.Generator().manual_seed(1)
    state = g.get_state()
    off = ColourJitter()
    assert not off.enabled and off(x, g) is x
    assert torch.equal(g.get_state(), state)  # the step's other draws stay as they were without the option
    assert not ColourJitter.from_config(None).enabled


@needs_kornia
def test_jitter_is_seeded_per_image_and_leaves_the_global_generator_alone():
    jitter = ColourJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
    same = images(1).expand(4, -1, -1, -1)
    state = torch.get_rng_state()
    a = jitter(same, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, jitter(same, torch.Generator().manual_seed(5)))  # same generator, same result
    assert not torch.equal(a, jitter(same, torch.Generator().manual_seed(6)))
    assert len({tuple(img.flatten().tolist()) for img in a}) == 4  # one draw per image
    assert a.dtype == torch.uint8 and a.shape == same.shape


@needs_kornia
def test_factors_act_as_named():
    grey = torch.full((2, 3, 8, 8), 100, dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(ColourJitter(saturation=1.0, hue=0.5)(grey, g), grey)  # grey has no saturation or hue
    brighter = ColourJitter(brightness=0.5)(grey, g).float()
    ratio = brighter[:, :, 0, 0].mean(1) / 100  # torchvision semantics: multiply by a factor in [0.5, 1.5]
    assert ((ratio >= 0.49) & (ratio <= 1.51)).all() and not torch.allclose(ratio, torch.ones(2))
    red = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    red[:, 0] = 200
    shifted = ColourJitter(hue=0.5)(red, g)
    assert shifted[:, 1:].float().mean() > 0  # the hue moved off pure red


@pytest.mark.parametrize("key,value", [("hue", 0.6), ("brightness", -0.1), ("contrast", 1.5)])
def test_out_of_range_strength_is_named(key, value):
    with pytest.raises(ValueError, match=f"data.colour_jitter.{key}"):
        ColourJitter(**{key: value})


def test_without_kornia_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "kornia.augmentation", None)
    with pytest.raises(ImportError, match=r"leafseg\[augment\]"):
        ColourJitter(hue=0.1)


@needs_kornia
def test_wrong_input_is_refused():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\) uint8"):
        ColourJitter(brightness=0.1)(torch.rand(2, 3, 8, 8), torch.Generator())


def test_paper_and_default_configs_have_no_colour_jitter(monkeypatch):
    monkeypatch.setenv("LEAFSEG_PRETRAINED", "/pretrained")
    for name in ("default", "paper", "cpu"):
        section = load_config(name, ["data.root=x"]).data.colour_jitter
        assert not ColourJitter.from_config(section).enabled, name  # the authors augment with flips only


@needs_kornia
@pytest.mark.parametrize("method", ["leaf", "supervised_unet"])
def test_training_with_colour_jitter_is_deterministic_and_differs(tmp_path, synthetic, method, capsys):
    extra = [f"method={method}", "train.max_steps=2", "train.val_every=100", "train.checkpoint_every=100"]
    jitter = ["data.colour_jitter.brightness=0.4", "data.colour_jitter.saturation=0.4", "data.colour_jitter.hue=0.1"]
    losses = {}
    for name, overrides in (("a", jitter), ("b", jitter), ("off", [])):
        result = train(tiny_config(tmp_path / name, synthetic, *extra, *overrides))
        losses[name] = [h["loss"] for h in result.history if "loss" in h]
    assert losses["a"] == losses["b"]  # seeded from the step's generator: reproducible (and resumable)
    assert losses["a"] != losses["off"]
    assert "colour jitter (brightness 0.4, saturation 0.4, hue 0.1)" in capsys.readouterr().out
