"""Diffusion maths shared by training and inference: the noise schedule, targets and x0 recovery.

Parameterisations (diffusers' ``prediction_type`` names):
  ``sample`` (x0, LEAF's choice): target z0;  ``epsilon``: target eps;  ``v_prediction``: target
  sqrt(abar) eps - sqrt(1 - abar) z0.

Schedule. 1000 steps, betas from 0.0015 to 0.0155. Two spacings of the betas matter here:
  * ``linear`` (linear in beta): what the LEAF authors' code fine-tunes with -- it builds
    ``DDIMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0155, prediction_type=...)`` and leaves
    every other argument at diffusers' default (``beta_schedule="linear"``, ``clip_sample=True``,
    ``set_alpha_to_one=True``, ``timestep_spacing="leading"``). abar_999 = 2.0e-4.
  * ``scaled_linear`` (linear in sqrt(beta)): what CompVis' LDM code calls "linear", the schedule the pretrained
    LSUN-Churches UNet was trained with. abar_999 = 6.7e-4.
Every one of those settings is a config key (section ``diffusion``); ``configs/paper.yaml`` selects the authors'.

Single-step inference does not depend on the timestep spacing: the UNet runs once at t = T - 1 and the result is
the scheduler's ``pred_original_sample`` (clamped to +-``clip_sample_range`` when ``clip_sample`` is on, as
diffusers' DDIM ``step`` does). The spacing only places the steps of multi-step DDIM.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

PREDICTION_TYPES = ("sample", "epsilon", "v_prediction")
BETA_SCHEDULES = ("linear", "scaled_linear")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def make_scheduler(prediction_type: str = "sample", num_train_timesteps: int = 1000, beta_start: float = 0.0015,
                   beta_end: float = 0.0155, beta_schedule: str = "linear", clip_sample: bool = True,
                   clip_sample_range: float = 1.0, timestep_spacing: str = "leading") -> DDIMScheduler:
    """The DDIM scheduler of training and inference. Defaults are the LEAF authors' (diffusers' defaults);
    ``set_alpha_to_one=True`` (also theirs) makes the last DDIM step return its x0 estimate."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}; expected one of {BETA_SCHEDULES}")
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"unknown timestep_spacing {timestep_spacing!r}; expected one of {TIMESTEP_SPACINGS}")
    if clip_sample_range <= 0:
        raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range}")
    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
        beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=bool(clip_sample),
        clip_sample_range=float(clip_sample_range), set_alpha_to_one=True, timestep_spacing=timestep_spacing,
        steps_offset=0,
    )


def add_noise(scheduler: DDIMScheduler, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps (diffusers' ``add_noise``, computed in float32)."""
    return scheduler.add_noise(z0.float(), noise.float(), t.to(z0.device)).to(z0.dtype)


def training_target(prediction_type: str, scheduler: DDIMScheduler, z0: torch.Tensor, noise: torch.Tensor,
                    t: torch.Tensor) -> torch.Tensor:
    if prediction_type == "sample":
        return z0
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(z0.float(), noise.float(), t.to(z0.device)).to(z0.dtype)
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def single_step_x0(scheduler: DDIMScheduler, model_output: torch.Tensor, z_t: torch.Tensor, t: int) -> torch.Tensor:
    """x0_hat from one UNet output at timestep ``t`` through DDIM's ``step`` (its ``pred_original_sample``), so the
    scheduler's ``clip_sample`` setting applies exactly as in diffusers."""
    if scheduler.num_inference_steps is None:
        scheduler.set_timesteps(1)
    return scheduler.step(model_output, int(t), z_t, eta=0.0).pred_original_sample


def predict_x0(prediction_type: str, scheduler: DDIMScheduler, model_output: torch.Tensor, z_t: torch.Tensor,
               t: torch.Tensor) -> torch.Tensor:
    """Recover x0_hat from the UNet output under each parameterisation (unclipped; per-sample timesteps)."""
    if prediction_type == "sample":
        return model_output
    abar = scheduler.alphas_cumprod.to(device=z_t.device, dtype=torch.float32)[t.to(z_t.device).long()]
    abar = abar.view(-1, *([1] * (z_t.ndim - 1)))
    out, zt = model_output.float(), z_t.float()
    if prediction_type == "epsilon":
        x0 = (zt - (1 - abar).sqrt() * out) / abar.sqrt()
    elif prediction_type == "v_prediction":
        x0 = abar.sqrt() * zt - (1 - abar).sqrt() * out
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
    return x0.to(model_output.dtype)
