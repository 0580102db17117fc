import pytest
import torch

from leafseg.models.alignment import Projector, alignment_loss, feature_map_to_tokens


def test_tokens_are_row_major():
    h = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    tokens = feature_map_to_tokens(h)
    assert tokens.shape == (2, 4, 3)
    torch.testing.assert_close(tokens[0, 1], h[0, :, 0, 1])  # token 1 = row 0, column 1
    torch.testing.assert_close(tokens[1, 2], h[1, :, 1, 0])


def test_loss_on_known_inputs():
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (B=1, N=2, D=2)
    assert alignment_loss(a, a * 3).item() == pytest.approx(-1.0)  # same direction, any scale
    assert alignment_loss(a, -a).item() == pytest.approx(1.0)
    orth = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert alignment_loss(a, orth).item() == pytest.approx(0.0)
    half = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # cos 1 and cos 0 -> mean -0.5
    assert alignment_loss(a, half).item() == pytest.approx(-0.5)


def test_mean_over_batch_and_tokens_and_quirk():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 6, 5, generator=g), torch.randn(4, 6, 5, generator=g)
    cos = torch.nn.functional.cosine_similarity(s, t, dim=-1)
    assert alignment_loss(s, t).item() == pytest.approx(-cos.mean().item(), abs=1e-6)
    assert alignment_loss(s, t, reference_batch_quirk=True).item() == pytest.approx(-cos.mean().item() / 4, abs=1e-6)


def test_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match="grid"):
        alignment_loss(torch.zeros(1, 4, 3), torch.zeros(1, 16, 3))


def test_projector_shapes_and_layers():
    p = Projector(in_dim=8, out_dim=5, hidden_dim=16)
    assert p(torch.randn(2, 9, 8)).shape == (2, 9, 5)
    linears = [m for m in p.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 16), (16, 5)]
    assert sum(isinstance(m, torch.nn.SiLU) for m in p.modules()) == 2
