"""Diffusion maths shared by training and inference: the noise schedule, targets and x0 recovery.

Parameterisations (diffusers' ``prediction_type`` names):
  ``sample`` (x0, LEAF's choice): target z0;  ``epsilon``: target eps;  ``v_prediction``: target
  sqrt(abar) eps - sqrt(1 - abar) z0.

Schedule: 1000 steps, betas from 0.0015 to 0.0155. The CompVis code calls its schedule "linear" but spaces the
betas linearly in sqrt(beta) (``torch.linspace(start**0.5, end**0.5, n) ** 2``), which is diffusers'
``scaled_linear``; that is our default. ``linear`` (linear in beta) is available too.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

PREDICTION_TYPES = ("sample", "epsilon", "v_prediction")


def make_scheduler(prediction_type: str = "sample", num_train_timesteps: int = 1000, beta_start: float = 0.0015,
                   beta_end: float = 0.0155, beta_schedule: str = "scaled_linear") -> DDIMScheduler:
    """DDIM with "trailing" spacing, so that one inference step runs at t = T - 1 = 999, and alpha_prev = 1 at the
    last step, so that a one-step DDIM update returns exactly the predicted x0 (LEAF's single-step inference)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
        beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=False,
        set_alpha_to_one=True, timestep_spacing="trailing", steps_offset=0,
    )


def _abar(scheduler: DDIMScheduler, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    abar = scheduler.alphas_cumprod.to(device=like.device, dtype=torch.float32)[t.to(like.device).long()]
    return abar.view(-1, *([1] * (like.ndim - 1)))


def add_noise(scheduler: DDIMScheduler, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps."""
    abar = _abar(scheduler, t, z0)
    return (abar.sqrt() * z0.float() + (1 - abar).sqrt() * noise.float()).to(z0.dtype)


def training_target(prediction_type: str, scheduler: DDIMScheduler, z0: torch.Tensor, noise: torch.Tensor,
                    t: torch.Tensor) -> torch.Tensor:
    if prediction_type == "sample":
        return z0
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        abar = _abar(scheduler, t, z0)
        return (abar.sqrt() * noise.float() - (1 - abar).sqrt() * z0.float()).to(z0.dtype)
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def predict_x0(prediction_type: str, scheduler: DDIMScheduler, model_output: torch.Tensor, z_t: torch.Tensor,
               t: torch.Tensor) -> torch.Tensor:
    """Recover x0_hat from the UNet output under each parameterisation."""
    if prediction_type == "sample":
        return model_output
    abar = _abar(scheduler, t, z_t)
    out, zt = model_output.float(), z_t.float()
    if prediction_type == "epsilon":
        x0 = (zt - (1 - abar).sqrt() * out) / abar.sqrt()
    elif prediction_type == "v_prediction":
        x0 = abar.sqrt() * zt - (1 - abar).sqrt() * out
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
    return x0.to(model_output.dtype)
