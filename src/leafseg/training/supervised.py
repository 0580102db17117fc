"""The supervised UNet baseline as a training method: what a user would otherwise train, for the ablation table.

Image -> one foreground logit per pixel (leafseg.pipelines.supervised), trained with soft Dice + BCE (MONAI
``DiceCELoss`` definitions: per-image soft Dice with smooth 1e-5 in numerator and denominator, mean over the
batch, plus mean BCE-with-logits), with the engine's AdamW, warm-up, grad clip, EMA, seeded batches and flips and
selection on val Dice. Run it with ``leafseg train`` and ``method: supervised_unet`` (config section
``baseline``); it writes the same run folder as LEAF and ``leafseg evaluate`` reads its ``model-best`` alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from omegaconf import DictConfig

from ..config import to_container
from ..metrics import dice as dice_score
from ..pipelines.supervised import SupervisedSegPipeline, build_segmentation_unet, unet_logits
from ..data.loader import TrainBatch
from .engine import RunContext
from .run_data import volume_config


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


class SupervisedMethod:
    tracker_name = "leafseg-baseline"
    description = "training (supervised UNet)"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def build(self, run: RunContext) -> torch.nn.Module:
        self.run = run
        if run.data.num_classes > 1:
            raise ValueError("method supervised_unet segments one structure; for a multi-class dataset train a MONAI "
                             "peer (method=basicunet or dynunet) or LEAF")
        return build_segmentation_unet(int(self.cfg.data.resolution), **to_container(self.cfg.baseline.unet))

    def ema_module(self, model: UNet2DModel) -> torch.nn.Module:
        return model

    def compile_networks(self, model: torch.nn.Module) -> int:
        """The whole network (no hooks on it)."""
        from ..pipelines.compilation import compile_module

        compile_module(model)
        return 1

    def losses(self, model: torch.nn.Module, batch: TrainBatch, generator: torch.Generator
               ) -> dict[str, torch.Tensor]:
        device, bc = self.run.device, self.cfg.baseline
        images = self.run.colour_jitter(batch.images, generator)
        with self.run.accelerator.autocast():
            logits = unet_logits(model, images.to(device).float() / 255 * 2 - 1)
        return {"loss": dice_bce_loss(logits, batch.masks.to(device), float(bc.dice_weight), float(bc.bce_weight))}

    def row_files(self) -> tuple:
        return None, None  # no frozen targets

    def validate(self, model: UNet2DModel) -> list[float]:
        device, scores = self.run.device, []
        for images, masks in self.run.data.val.batches(16):
            x = images.to(device).float() / 255 * 2 - 1
            with self.run.accelerator.autocast():
                pred = self._foreground(model, x)
            scores += [self._score(p, g) for p, g in zip(pred.cpu().numpy(), masks.numpy())]
        return scores

    def _score(self, pred, gt) -> float:
        return dice_score(pred, gt)

    def _foreground(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        """(B, R, R) bool: the network's mask of images in [-1, 1] (probability > 0.5)."""
        return unet_logits(model, images) > 0

    def pipeline(self, model: UNet2DModel) -> SupervisedSegPipeline:
        return SupervisedSegPipeline(unet=model, **volume_config(self.cfg))
