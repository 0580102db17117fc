"""Supervised segmenters' pipelines: the UNet baseline (image (3, R, R) -> one foreground logit per pixel) and the
MONAI peer networks (softmax over background and the structures: label maps for multi-class models).

The baseline network is a diffusers ``UNet2DModel`` (3 in, 1 out) called at a constant timestep 0: its time
embedding is then a learned per-block bias, and the rest is an ordinary convolutional UNet with attention in the deep
levels. Trained by ``leafseg.training.supervised`` (``method: supervised_unet``); the MONAI peers by
``leafseg.training.peers`` (``method: dynunet`` or ``basicunet``).
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, UNet2DModel

from ..data.labels import LabelTable
from ..models.monai_nets import MonaiSegmenter
from .flips import flipped_views, merge_views
from .frame_decision import FrameDecision, stored_decision
from .image_processor import SegmentationImageProcessor


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


class _SegmenterPipeline(DiffusionPipeline):
    """The call every deterministic image -> probability pipeline shares (LeafSegPipeline's signature and output);
    a subclass says how its network gives the foreground probability of a batch in [-1, 1]."""

    supports_multistep = False  # deterministic: one forward pass, no seeds
    supports_ensembles = False

    @property
    def resolution(self) -> int:
        raise NotImplementedError

    def foreground_probability(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1], on the network's device and dtype -> (B, R, R) probabilities."""
        raise NotImplementedError

    def class_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) in [-1, 1] -> (B, K + 1, R, R) class probabilities (multi-class networks only)."""
        raise NotImplementedError(f"{type(self).__name__} segments one structure")

    @property
    def label_table(self) -> LabelTable | None:
        """The structures of a multi-class model (None: one structure)."""
        labels = self.config.get("labels")
        return LabelTable.from_dict(dict(labels), "labels") if labels else None

    @torch.no_grad()
    def __call__(self, image, num_inference_steps: int = 1, ensemble_size: int = 1, seed: int = 0,
                 generator=None, threshold: float = 0.5, batch_size: int = 8, flip_tta: bool = False,
                 frame_decision: bool = True, return_dict: bool = True):
        """Segment one image or a list of images, as :meth:`LeafSegPipeline.__call__` does.

        Args:
            image: one image or a list (PIL, numpy arrays, torch tensors; see ``LeafSegPipeline.__call__``).
            num_inference_steps: must be 1 (one forward pass).
            ensemble_size: must be 1 (deterministic: nothing to average).
            seed: accepted and unused, so that every pipeline takes the same call.
            generator: accepted and unused.
            threshold: probability above which a pixel is foreground.
            batch_size: images per forward pass.
            flip_tta: average over the image and its three flipped copies (:mod:`leafseg.pipelines.flips`).
            frame_decision: apply the model's calibrated "nothing here" decision, if it has one.
            return_dict: False returns the tuple ``(masks, probabilities, uncertainty)``.

        Returns:
            A :class:`SegmentationPipelineOutput` (``uncertainty`` None) at each input's own size.

        Raises:
            ValueError: ``num_inference_steps`` or ``ensemble_size`` other than 1, or a bad input.
        """
        if num_inference_steps != 1 or ensemble_size != 1:
            raise ValueError(f"{type(self).__name__} is deterministic: num_inference_steps and ensemble_size must "
                             "be 1")
        processor = SegmentationImageProcessor(self.resolution)
        images, sizes = processor.preprocess(image)
        device, dtype = self.device, self.dtype
        if self.config.get("labels"):  # several structures: softmax over the classes, label maps out
            if flip_tta:
                self.label_table.check_mirroring("flip_tta")
            probs = []
            for i in range(0, len(images), batch_size):
                chunk = images[i:i + batch_size]
                chunk = flipped_views(chunk) if flip_tta else chunk
                p = self.class_probabilities(chunk.to(device, dtype)).float()
                probs.append(merge_views(p.transpose(0, 1)).transpose(0, 1) if flip_tta else p)
            output = processor.postprocess_labels(torch.cat(probs), None, sizes)
            return output if return_dict else (output.masks, output.probabilities, output.uncertainty)
        probs = []
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            chunk = flipped_views(chunk) if flip_tta else chunk
            soft = self.foreground_probability(chunk.to(device, dtype)).float()
            probs.append(merge_views(soft) if flip_tta else soft)
        output = processor.postprocess(torch.cat(probs), None, sizes, threshold, stored_decision(self, frame_decision))
        return output if return_dict else (output.masks, output.probabilities, output.uncertainty)


class SupervisedSegPipeline(_SegmenterPipeline):
    """Inference for the baseline, with LeafSegPipeline's call signature and output (deterministic: no seeds)."""

    def __init__(self, unet: UNet2DModel, intensity: dict | None = None, slice_axis: int = 2,
                 frame_decision: dict | None = None):
        super().__init__()
        self.register_modules(unet=unet)
        FrameDecision.from_config(frame_decision)
        # volumes, as for LeafSegPipeline
        self.register_to_config(intensity=intensity, slice_axis=slice_axis, frame_decision=frame_decision)

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size)

    def foreground_probability(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(unet_logits(self.unet, images).float())


class MonaiSegPipeline(_SegmenterPipeline):
    """Inference for a MONAI peer network (:class:`leafseg.models.monai_nets.MonaiSegmenter`), with
    LeafSegPipeline's call signature and output: softmax, the foreground class's probability."""

    def __init__(self, network: MonaiSegmenter, intensity: dict | None = None, slice_axis: int = 2,
                 frame_decision: dict | None = None, labels: dict | None = None):
        super().__init__()
        self.register_modules(network=network)
        FrameDecision.from_config(frame_decision)
        if labels is not None and len(labels) != int(network.config.num_classes):
            raise ValueError(f"labels name {len(labels)} classes but the network has {network.config.num_classes}")
        self.register_to_config(intensity=intensity, slice_axis=slice_axis, frame_decision=frame_decision,
                                labels=labels)

    @property
    def resolution(self) -> int:
        return int(self.network.config.sample_size)

    def foreground_probability(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.foreground_probability(images)

    def class_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.class_probabilities(images)
