import pytest
import torch

from leafseg.diffusion import PREDICTION_TYPES, add_noise, make_scheduler, predict_x0, training_target


def test_default_schedule_is_linear_in_beta():
    # the authors' DDIMScheduler(beta_start=0.0015, beta_end=0.0155) with diffusers' default beta_schedule="linear"
    s = make_scheduler()
    expected = torch.linspace(0.0015, 0.0155, 1000, dtype=torch.float64)
    torch.testing.assert_close(s.betas.double(), expected, rtol=1e-6, atol=1e-9)
    assert s.config.num_train_timesteps == 1000


def test_scaled_linear_is_compvis_linear():
    # CompVis "linear": torch.linspace(start ** 0.5, end ** 0.5, n) ** 2
    s = make_scheduler(beta_schedule="scaled_linear")
    expected = torch.linspace(0.0015**0.5, 0.0155**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(s.betas.double(), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_targets_and_x0_recovery(kind):
    s = make_scheduler(kind)
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    z_t = add_noise(s, z0, eps, t)
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(z_t, abar.sqrt() * z0 + (1 - abar).sqrt() * eps)
    target = training_target(kind, s, z0, eps, t)
    expected = {"sample": z0, "epsilon": eps, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * z0}[kind]
    torch.testing.assert_close(target, expected)
    # a perfect prediction of the target gives back z0 exactly (up to float error)
    torch.testing.assert_close(predict_x0(kind, s, target, z_t, t), z0, rtol=1e-3, atol=2e-3)


def test_add_noise_agrees_with_diffusers():
    s = make_scheduler()
    g = torch.Generator().manual_seed(1)
    z0, eps = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    t = torch.tensor([10, 900])
    torch.testing.assert_close(add_noise(s, z0, eps, t), s.add_noise(z0, eps, t))


def test_unknown_prediction_type_and_schedule():
    with pytest.raises(ValueError, match="prediction_type"):
        make_scheduler("x0")
    with pytest.raises(ValueError, match="beta_schedule"):
        make_scheduler(beta_schedule="cosine")
    with pytest.raises(ValueError, match="timestep_spacing"):
        make_scheduler(timestep_spacing="uniform")
