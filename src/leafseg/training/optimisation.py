"""The optimiser's companions every method shares: diffusers' LR schedules (and their retargeting when the time
budget decides the step count), diffusers' EMA and the swap of its weights, and the step after a loss.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig

def make_lr_scheduler(optimizer: torch.optim.Optimizer, tc: DictConfig, total: int | None = None):
    """diffusers' schedule ``train.lr_schedule`` with ``train.warmup_steps`` linear warm-up over ``total`` steps
    (default ``train.max_steps``)."""
    names = ("constant_with_warmup", "cosine", "linear")
    if tc.lr_schedule not in names:
        raise ValueError(f"train.lr_schedule must be one of {names}, got {tc.lr_schedule!r}")
    return get_scheduler(tc.lr_schedule, optimizer, num_warmup_steps=int(tc.warmup_steps),
                         num_training_steps=int(tc.max_steps if total is None else total))


def retarget_lr_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, tc: DictConfig, total: int) -> None:
    """Make ``scheduler`` (from :func:`make_lr_scheduler`) follow the curve it would have over ``total`` steps, in
    place: the step it is at and the LR it set stay, the next step reads the new curve (train.time_budget_min). The
    new curve's function comes from a scheduler on a throw-away optimiser, so the real one is not touched."""
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    curve = make_lr_scheduler(dummy, tc, total).lr_lambdas[0]
    scheduler.lr_lambdas = [curve] * len(scheduler.optimizer.param_groups)


def make_ema(model: torch.nn.Module, ec: DictConfig, device) -> EMAModel | None:
    """diffusers EMAModel of ``model`` per config section ``train.ema`` (None when disabled). ``warmup: false`` is
    EMAModel's default form, decay = min(decay, (1 + step) / (10 + step)); ``warmup: true`` the warm-up form."""
    if not ec.enabled:
        return None
    ema = EMAModel(model.parameters(), decay=float(ec.decay), use_ema_warmup=bool(ec.warmup), power=float(ec.power),
                   model_cls=type(model), model_config=model.config)
    ema.to(device)
    return ema


@contextmanager
def ema_weights(ema: EMAModel | None, parameters):
    """Swap the EMA weights in (validation, export) and the trained ones back afterwards; no-op without EMA."""
    if ema is None:
        yield
        return
    params = list(parameters)
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


@contextmanager
def eval_mode(module: torch.nn.Module):
    """module.eval() for the duration, back to train mode afterwards."""
    module.eval()
    try:
        yield
    finally:
        module.train()


def optimisation_step(accelerator: Accelerator, loss: torch.Tensor, params: list[torch.nn.Parameter], optimizer,
                      lr_scheduler, grad_clip: float | None, ema: EMAModel | None,
                      averaged: torch.nn.Module) -> torch.Tensor | None:
    """What follows one step's loss: backward, gradient clipping (``grad_clip``; off when 0/None), AdamW, LR schedule,
    EMA of ``averaged``. Returns the gradient norm before clipping (None without clipping). One function, so that
    benchmarks/train_speed.py times exactly the step this loop takes."""
    accelerator.backward(loss)
    grad_norm = accelerator.clip_grad_norm_(params, grad_clip) if grad_clip else None
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.step(averaged.parameters())
    return grad_norm
