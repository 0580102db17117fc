"""A plain supervised UNet baseline: what a user would otherwise train, for the ablation table.

Image (3, R, R) -> one foreground logit per pixel, trained with soft Dice + BCE (MONAI ``DiceCELoss`` definitions:
per-image soft Dice with smooth 1e-5 in numerator and denominator, mean over the batch, plus mean BCE-with-logits),
AdamW, linear warm-up, grad-norm clip, EMA, the same seeded batches and flips as LEAF, selection on val Dice.
The network is a diffusers ``UNet2DModel`` (3 in, 1 out) called at a constant timestep 0: its time embedding is
then a learned per-block bias, and the rest is an ordinary convolutional UNet with attention in the deep levels.

Run it with ``leafseg train`` and ``method: supervised_unet`` (config section ``baseline``); it writes the same run
folder (split.json, logs/, checkpoint-last/, model-best/, model-last/), and ``leafseg evaluate`` reads its
``model-best`` like a LEAF one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from diffusers import DiffusionPipeline, UNet2DModel
from omegaconf import DictConfig

from . import data as D
from .config import to_container
from .metrics import dice as dice_score
from .pipeline import preprocess_images, to_output


def build_segmentation_unet(resolution: int, block_out_channels=(32, 64, 128, 256), layers_per_block: int = 2,
                            attention_levels: int = 1, norm_num_groups: int = 16,
                            attention_head_dim: int = 32) -> UNet2DModel:
    """UNet2DModel 3 -> 1 channels with attention in the ``attention_levels`` deepest levels."""
    n = len(block_out_channels)
    down = ["DownBlock2D"] * (n - attention_levels) + ["AttnDownBlock2D"] * attention_levels
    up = ["AttnUpBlock2D"] * attention_levels + ["UpBlock2D"] * (n - attention_levels)
    return UNet2DModel(sample_size=resolution, in_channels=3, out_channels=1,
                       block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                       down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=norm_num_groups,
                       attention_head_dim=attention_head_dim)


def unet_logits(unet: UNet2DModel, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, R, R) in [-1, 1] -> (B, R, R) logits (constant timestep 0)."""
    t = torch.zeros(images.shape[0], device=images.device, dtype=torch.long)
    return unet(images, t).sample[:, 0]


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0, bce_weight: float = 1.0,
                  smooth: float = 1e-5) -> torch.Tensor:
    """MONAI DiceCELoss(sigmoid=True) for one foreground channel: soft Dice per image (mean over the batch) + BCE."""
    target = target.float()
    prob = torch.sigmoid(logits.float())
    dims = tuple(range(1, prob.ndim))
    inter = (prob * target).sum(dims)
    soft_dice = 1 - (2 * inter + smooth) / (prob.sum(dims) + target.sum(dims) + smooth)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target)
    return dice_weight * soft_dice.mean() + bce_weight * bce


class SupervisedSegPipeline(DiffusionPipeline):
    """Inference for the baseline, with LeafSegPipeline's call signature and output (deterministic: no seeds)."""

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        self.register_modules(unet=unet)

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size)

    @torch.no_grad()
    def __call__(self, image, num_inference_steps: int = 1, ensemble_size: int = 1, seed: int = 0,
                 generator=None, threshold: float = 0.5, batch_size: int = 8, return_dict: bool = True):
        if num_inference_steps != 1 or ensemble_size != 1:
            raise ValueError("the supervised UNet is deterministic: num_inference_steps and ensemble_size must be 1")
        images, sizes = preprocess_images(image, self.resolution)
        device, dtype = self.unet.device, self.unet.dtype
        probs = [torch.sigmoid(unet_logits(self.unet, images[i:i + batch_size].to(device, dtype)).float())
                 for i in range(0, len(images), batch_size)]
        output = to_output(torch.cat(probs), None, sizes, threshold)
        return output if return_dict else (output.masks, output.probabilities, output.uncertainty)


def train_supervised(cfg: DictConfig, resume: bool = False):
    """Train the baseline on the config's data, with LEAF's schedule keys (``train.*``) and ``baseline.*``."""
    from .training import (StepBookkeeping, batch_indices, ema_weights, eval_mode, flip_codes, load_run_data,
                           load_trainer_state, make_ema, make_lr_scheduler, save_pipeline, seeded, start_run)

    tc, bc = cfg.train, cfg.baseline
    accelerator, run_dir = start_run(cfg, resume)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    data = load_run_data(cfg, run_dir, accelerator)

    set_seed(int(cfg.run.seed))
    unet = build_segmentation_unet(int(cfg.data.resolution), **to_container(bc.unet))
    optimizer = torch.optim.AdamW(unet.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                                  betas=tuple(tc.adam_betas))
    lr_scheduler = make_lr_scheduler(optimizer, tc)
    model, optimizer = accelerator.prepare(unet, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    base: UNet2DModel = accelerator.unwrap_model(model)
    ema = make_ema(base, tc.ema, device)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    state = load_trainer_state(accelerator, run_dir, resume)
    if accelerator.is_main_process:
        accelerator.init_trackers("leafseg-baseline")

    def export(path: Path) -> None:
        with ema_weights(ema, base.parameters()):
            save_pipeline(SupervisedSegPipeline(unet=base), path)

    def validate() -> float:
        scores = []
        with ema_weights(ema, base.parameters()), eval_mode(base), torch.no_grad():
            for i in range(0, len(data.val_images), 16):
                x = data.val_images[i:i + 16].to(device).float() / 255 * 2 - 1
                with accelerator.autocast():
                    pred = unet_logits(base, x) > 0
                scores += [dice_score(p, g) for p, g in zip(pred.cpu().numpy(), data.val_masks[i:i + 16].numpy())]
        return float(np.mean(scores))

    codes = flip_codes(cfg.data.hflip, cfg.data.vflip)
    n_train, bs, seed = len(data.train_pairs), int(tc.batch_size), int(cfg.run.seed)
    step = int(state["step"])
    book = StepBookkeeping(accelerator, cfg, state, run_dir, validate, export, data.val_images is not None,
                           "training (supervised UNet)")
    model.train()
    while step < int(tc.max_steps):
        idx = batch_indices(n_train, bs, world, rank, step, seed)
        code = torch.randint(len(codes), (len(idx),), generator=seeded(seed, 2, step, rank)).tolist()
        images = torch.stack([D.flip(data.train_images[i], *codes[c]) for i, c in zip(idx.tolist(), code)])
        masks = torch.stack([D.flip(data.train_masks[i], *codes[c]) for i, c in zip(idx.tolist(), code)])
        with accelerator.autocast():
            logits = unet_logits(model, images.to(device).float() / 255 * 2 - 1)
        loss = dice_bce_loss(logits, masks.to(device), float(bc.dice_weight), float(bc.bce_weight))
        accelerator.backward(loss)
        if tc.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(base.parameters())
        step += 1
        book.after_step(step, {"loss": loss}, lambda: {"lr": lr_scheduler.get_last_lr()[0]})
    return book.finish()
