"""image_encoder.dropout_sampler: torch's dropout masks (the authors') or words16 (the same law from 16-bit slices of
random words, 1.8-4.8x faster on a CPU). Pinned: the law (keep probability, scale, independence), the default generator
as the source, gradients, the image encoder's routing and its saved config, and which recipe picks which."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leafseg.config import load_config
from leafseg.config_schema import DropoutSampler
from leafseg.models.dropout import DROPOUT_SAMPLERS, Dropout, dropout, dropout_words16, keep_threshold
from leafseg.models.image_encoder import ImageEncoder
from leafseg.models.taef2 import TAEF2
from tiny import tiny_autoencoder


def test_words16_keeps_each_element_with_probability_one_minus_p():
    torch.manual_seed(0)
    n, p = 1 << 20, 0.2
    out = dropout_words16(torch.ones(n), p)
    keep = keep_threshold(p)
    assert keep == 52429
    kept = out != 0
    assert out[kept].unique().tolist() == [pytest.approx(65536 / keep)]
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(1 - kept.float().mean().item() - p) < 5 * sigma
    assert abs(out.mean().item() - 1.0) < 5 * sigma / (1 - p)  # unbiased: the scale is 1 / the quantised keep
    # neighbours (slices of one 64-bit word, and of the next) are dropped independently: P(both) = p^2
    both = (~kept[:-1] & ~kept[1:]).float().mean().item()
    assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / n) ** 0.5
    by_slot = (~kept).view(-1, 4).float().mean(0)  # each of the word's four slices alike
    assert (by_slot - p).abs().max() < 5 * (p * (1 - p) / (n / 4)) ** 0.5


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_words16_edges(p):
    x = torch.randn(3, 5, 7)  # an element count that is not a multiple of 4
    torch.manual_seed(1)
    out = dropout_words16(x, p)
    if p == 0.0:
        assert out is x
    elif p == 1.0:
        assert not out.any()
    else:
        kept = out != 0
        torch.testing.assert_close(out[kept], x[kept] * 2.0)
    assert dropout_words16(x, 0.5, training=False) is x
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        keep_threshold(1.5)


def test_words16_draws_from_the_default_generator_and_is_pinned():
    x = torch.ones(2, 3, 4, 4)
    torch.manual_seed(0)
    a = dropout_words16(x, 0.2)
    torch.manual_seed(0)
    b = dropout_words16(x, 0.2)
    torch.manual_seed(1)
    c = dropout_words16(x, 0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the expected slice: which of the first 16 elements seed 0 drops (a refactor must not change the stream)
    assert (a.flatten()[:16] == 0).nonzero().flatten().tolist() == EXPECTED_DROPPED
    assert int((a == 0).sum()) == EXPECTED_ZEROS


EXPECTED_DROPPED = [8, 12, 14]
EXPECTED_ZEROS = 20


def test_words16_gradient_is_the_mask_times_the_scale():
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    torch.manual_seed(3)
    y = dropout_words16(x, 0.3)
    y.backward(torch.ones_like(y))
    scale = 65536 / keep_threshold(0.3)
    torch.testing.assert_close(x.grad, (y != 0).float() * scale)


def test_torch_sampler_is_f_dropout_and_a_wrong_name_is_refused():
    x = torch.randn(2, 4, 8, 8)
    torch.manual_seed(5)
    a = dropout(x, 0.2, True, "torch")
    torch.manual_seed(5)
    torch.testing.assert_close(a, F.dropout(x, 0.2, True))
    with pytest.raises(ValueError, match="words16"):
        dropout(x, 0.2, True, "fast")
    with pytest.raises(ValueError, match="words16"):
        Dropout(0.2, "fast")


@pytest.mark.parametrize("family", ["kl", "taef2"])
def test_image_encoder_routes_its_dropout_through_the_sampler(family, tmp_path):
    ae = tiny_autoencoder() if family == "kl" else TAEF2().eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    encoders = {s: ImageEncoder.from_autoencoder(ae, dropout=0.2, dropout_sampler=s) for s in ("torch", "words16")}
    outs = {}
    for sampler, enc in encoders.items():
        enc.train()
        torch.manual_seed(0)
        with torch.no_grad():
            outs[sampler] = enc(x)
        torch.manual_seed(0)
        with torch.no_grad():
            torch.testing.assert_close(enc(x), outs[sampler])  # seeded
    assert not torch.allclose(outs["torch"], outs["words16"])  # other masks
    if family == "kl":
        assert all(m.sampler == "words16" for m in encoders["words16"].modules() if isinstance(m, Dropout))
        assert any(isinstance(m, Dropout) for m in encoders["words16"].modules())
    with torch.no_grad():  # eval: no dropout, the same encoder
        torch.testing.assert_close(encoders["torch"].eval()(x), encoders["words16"].eval()(x))
    encoders["words16"].save_pretrained(tmp_path)
    loaded = ImageEncoder.from_pretrained(tmp_path)
    assert loaded.config.dropout_sampler == "words16" and loaded.config.dropout == 0.2
    with pytest.raises(ValueError, match="image_encoder.dropout_sampler"):
        ImageEncoder.from_autoencoder(ae, dropout=0.2, dropout_sampler="fast")


def test_the_config_schema_offers_exactly_the_samplers_the_module_draws():
    """The names live twice (config_schema stays free of torch, which leafseg compare/score avoid importing)."""
    assert tuple(DropoutSampler) == DROPOUT_SAMPLERS


def test_paper_keeps_torch_masks_and_the_cpu_recipes_draw_words16(monkeypatch):
    monkeypatch.setenv("LEAFSEG_PRETRAINED", "/pretrained")
    assert load_config("paper", ["data.root=x"]).image_encoder.dropout_sampler == "torch"
    assert load_config(None, ["data.root=x"]).image_encoder.dropout_sampler == "torch"
    for recipe in ("cpu", "cpu-polyp"):
        assert load_config(recipe, ["data.root=x"]).image_encoder.dropout_sampler == "words16"
    with pytest.raises(ValueError, match="dropout_sampler"):
        load_config(None, ["data.root=x", "image_encoder.dropout_sampler=fast"])


def test_a_words16_run_resumes_bit_for_bit_and_differs_from_torch_masks(tmp_path, synthetic):
    """The sampler reaches training (other weights than torch's masks give) and, drawing from the default generator
    whose state a checkpoint keeps, a resumed run continues exactly."""
    from leafseg.training import train
    from tiny import BITWISE, saved_weights, tiny_config

    def weights(result):
        return saved_weights(result.run_dir, "image_encoder")

    words = ("image_encoder.dropout_sampler=words16", BITWISE)
    straight = train(tiny_config(tmp_path / "a", synthetic, "train.max_steps=4", *words))
    train(tiny_config(tmp_path / "b", synthetic, "train.max_steps=2", *words))
    resumed = train(tiny_config(tmp_path / "b", synthetic, "train.max_steps=4", *words), resume=True)
    torch_masks = train(tiny_config(tmp_path / "c", synthetic, "train.max_steps=4", BITWISE))
    a, b, c = weights(straight), weights(resumed), weights(torch_masks)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(a[k], c[k]) for k in a)
