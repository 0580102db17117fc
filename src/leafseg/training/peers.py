"""MONAI peer networks as training methods (``method: dynunet`` or ``basicunet``): what users would otherwise
train, on leafseg's engine, batches, splits, optimiser and time budget, so that a comparison differs in the network
and its loss only.

Loss as nnU-Net trains its 2D UNet: MONAI ``DiceCELoss`` with softmax over background and the structures (one
foreground class, or several for a multi-class dataset), soft Dice of each foreground class over the whole batch
(nnU-Net's 2D ``batch_dice``, smooth 1e-5) plus cross-entropy over all classes, weights 1 and 1. DynUNet adds
deep supervision: the full-size output and 3 lower-resolution heads weighted 1, 1/2, 1/4, 1/8 (normalised),
nnU-Net's weights for the heads it uses (it gives the lowest one weight 0). Where leafseg differs from nnU-Net's own
trainer: MONAI upsamples the low-resolution heads to the target's size instead of downsampling the target; the
optimiser (AdamW, the engine's warm-up and schedule) and the augmentation are leafseg's, shared by every method;
nnU-Net itself runs as a reference in ``benchmarks/peers/``.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from ..config import to_container
from ..data.loader import TrainBatch
from ..metrics import mean_class_dice
from ..models.monai_nets import MonaiSegmenter
from ..pipelines.supervised import MonaiSegPipeline
from .engine import RunContext
from .run_data import volume_config
from .supervised import SupervisedMethod


def dice_ce_loss(batch_dice: bool = True, dice_weight: float = 1.0, ce_weight: float = 1.0):
    """nnU-Net's DC_and_CE loss in MONAI terms: (B, K + 1, R, R) logits, (B, 1, R, R) class indices -> scalar."""
    from monai.losses import DiceCELoss

    return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=batch_dice, smooth_nr=1e-5,
                      smooth_dr=1e-5, lambda_dice=dice_weight, lambda_ce=ce_weight)


def deep_supervision_weights(heads: int) -> list[float]:
    """1, 1/2, 1/4, ... for the full-size output and ``heads - 1`` lower ones, normalised to sum 1."""
    weights = [0.5 ** i for i in range(heads)]
    return [w / sum(weights) for w in weights]


class MonaiPeerMethod(SupervisedMethod):
    """A MONAI network (``architecture``) trained with Dice + CE; validation and export as the UNet baseline's."""

    tracker_name = "leafseg-peer"

    def __init__(self, cfg: DictConfig, architecture: str):
        super().__init__(cfg)
        self.architecture = architecture
        self.description = f"training (MONAI {architecture})"

    def build(self, run: RunContext) -> torch.nn.Module:
        self.run, pc = run, self.cfg.peers
        options = to_container(pc[self.architecture])
        deep = bool(options.pop("deep_supervision", False))
        self.loss = dice_ce_loss(bool(pc.batch_dice), float(pc.dice_weight), float(pc.ce_weight))
        return MonaiSegmenter(self.architecture, int(self.cfg.data.resolution), zscore_input=bool(pc.zscore_input),
                              num_classes=run.data.num_classes + 1, deep_supervision=deep, network=options)

    def losses(self, model: torch.nn.Module, batch: TrainBatch, generator: torch.Generator
               ) -> dict[str, torch.Tensor]:
        device = self.run.device
        images = self.run.colour_jitter(batch.images, generator)
        target = batch.masks.to(device)[:, None].long()
        with self.run.accelerator.autocast():
            out = model(images.to(device).float() / 255 * 2 - 1)
        out = out.float()
        if out.ndim == 5:  # deep supervision: (B, heads, classes, R, R)
            weights = deep_supervision_weights(out.shape[1])
            terms = [self.loss(out[:, k], target) for k in range(out.shape[1])]
            return {"loss": sum(w * t for w, t in zip(weights, terms)), "loss_full_size": terms[0].detach()}
        return {"loss": self.loss(out, target)}

    def _foreground(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        if self.run.data.num_classes > 1:  # a label map: the most probable class
            return model(images).argmax(1).to(torch.uint8)
        return model.foreground_probability(images) > 0.5

    def _score(self, pred, gt) -> float:
        k = self.run.data.num_classes
        return mean_class_dice(pred, gt, k) if k > 1 else super()._score(pred, gt)

    def pipeline(self, model: MonaiSegmenter) -> MonaiSegPipeline:
        labels = self.run.data.labels
        return MonaiSegPipeline(network=model, **volume_config(self.cfg),
                                labels=labels.to_dict() if labels is not None else None)
