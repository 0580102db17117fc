"""MONAI segmentation networks as diffusers models: the peers leafseg is compared with.

:class:`MonaiSegmenter` wraps a MONAI network (``DynUNet`` or ``BasicUNet``) in diffusers' ``ModelMixin`` /
``ConfigMixin``, so a trained peer saves, loads and exports like every other leafseg model (``save_pretrained``,
safetensors, ``from_pretrained`` offline). Images in [-1, 1] go in, ``num_classes`` logits per pixel come out (2 for
background / foreground, softmax, as nnU-Net trains).

:func:`nnunet_2d_topology` is nnU-Net v2's 2D plan for a square patch (``ExperimentPlanner`` defaults: 3x3 convs,
two per stage, 32 features doubling per stage up to 512, pooling while the feature map's edge is at least 8, i.e.
down to 4). MONAI is an optional dependency (``leafseg[peers]``), imported when a network is built.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

ARCHITECTURES = ("dynunet", "basicunet")


def nnunet_2d_topology(patch_size: int, base_features: int = 32, max_features: int = 512,
                       min_edge: int = 4) -> dict:
    """nnU-Net v2's 2D network for a ``patch_size`` x ``patch_size`` patch at isotropic spacing, as MONAI
    ``DynUNet`` arguments: one stage at full size, then a stride-2 stage for every halving that keeps the feature
    map's edge >= ``min_edge`` (128 px: 6 stages, 4 px at the bottom); features 32, 64, ... capped at 512."""
    if patch_size < 2 * min_edge:
        raise ValueError(f"patch size {patch_size}: nnU-Net's plan needs at least {2 * min_edge} px")
    strides, edge = [1], patch_size
    while edge % 2 == 0 and edge >= 2 * min_edge:  # nnU-Net pools an axis while it stays >= min_edge and even
        strides.append(2)
        edge //= 2
    filters = [min(base_features * 2 ** i, max_features) for i in range(len(strides))]
    return {"kernel_size": [3] * len(strides), "strides": strides, "upsample_kernel_size": strides[1:],
            "filters": filters}


@contextmanager
def _init_functions_return_their_tensor():
    """diffusers' ``from_pretrained`` builds a model with the ``torch.nn.init`` functions replaced by no-ops that
    return None (the weights are loaded next); DynUNet assigns their result (``module.weight = kaiming_normal_(...)``),
    which would delete its conv weights. While it builds, those calls hand their tensor back."""
    names = ("kaiming_normal_", "constant_")
    saved = {name: getattr(torch.nn.init, name) for name in names}

    def returning(init):
        def call(tensor, *args, **kwargs):
            out = init(tensor, *args, **kwargs)
            return tensor if out is None else out
        return call

    for name in names:
        setattr(torch.nn.init, name, returning(saved[name]))
    try:
        yield
    finally:
        for name in names:
            setattr(torch.nn.init, name, saved[name])


class MonaiSegmenter(ModelMixin, ConfigMixin):
    """A MONAI 2D segmentation network, ``(B, in_channels, R, R)`` in [-1, 1] -> ``(B, num_classes, R, R)`` logits.

    Args:
        architecture: ``dynunet`` (nnU-Net's plain conv UNet: instance norm, leaky ReLU, transposed-conv upsampling,
            deep supervision heads) or ``basicunet`` (MONAI's BasicUNet).
        sample_size: the square input size the network is planned for (DynUNet's topology follows it).
        in_channels, num_classes: image channels in, classes out (background included).
        zscore_input: normalise each image channel to zero mean and unit variance first (nnU-Net's scheme for
            non-CT images); images are then independent of their intensity scale.
        deep_supervision: DynUNet only: in training mode return the full-size logits and ``deep_supervision_heads``
            lower-resolution heads (upsampled by MONAI), stacked on dim 1.
        network: further keyword arguments of the MONAI class (e.g. BasicUNet ``features``; DynUNet topology
            overrides ``base_features`` / ``max_features``).
    """

    @register_to_config
    def __init__(self, architecture: str = "dynunet", sample_size: int = 128, in_channels: int = 3,
                 num_classes: int = 2, zscore_input: bool = True, deep_supervision: bool = False,
                 deep_supervision_heads: int = 3, network: dict | None = None):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        try:
            from monai.networks import nets
        except ImportError as err:
            raise ImportError("the MONAI peer networks need MONAI: pip install 'leafseg[peers]'") from err
        kwargs = dict(network or {})
        if architecture == "dynunet":
            plan = nnunet_2d_topology(sample_size, kwargs.pop("base_features", 32), kwargs.pop("max_features", 512))
            heads = min(deep_supervision_heads, len(plan["strides"]) - 2)
            with _init_functions_return_their_tensor():
                self.net = nets.DynUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, **plan,
                                        norm_name=("INSTANCE", {"affine": True}),
                                        act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
                                        deep_supervision=deep_supervision, deep_supr_num=max(heads, 1), **kwargs)
            # DynUNet registers each block twice, in its lists and in the skip chain its forward runs: safetensors
            # refuses tensors saved under two names, so the lists go (the chain keeps every block and head)
            for alias in ("input_block", "downsamples", "bottleneck", "upsamples", "deep_supervision_heads"):
                if hasattr(self.net, alias):
                    delattr(self.net, alias)
        else:
            if deep_supervision:
                raise ValueError("deep_supervision is a DynUNet option; BasicUNet has one output")
            self.net = nets.BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, **kwargs)

    @property
    def multiple_of(self) -> int:
        """Input sizes must be a multiple of this (the product of the strides)."""
        if self.config.architecture == "dynunet":
            return 2 ** (len(self.net.strides) - 1)
        return 16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] % self.multiple_of or images.shape[-2] % self.multiple_of:
            raise ValueError(f"{self.config.architecture}: expected (B, C, H, W) with H, W multiples of "
                             f"{self.multiple_of}, got {tuple(images.shape)}")
        if self.config.zscore_input:
            x = images.float()
            mean, std = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True)
            images = ((x - mean) / std.clamp_min(1e-8)).to(images.dtype)
        return self.net(images)

    def foreground_probability(self, images: torch.Tensor) -> torch.Tensor:
        """(B, R, R) probability of the last class (foreground), in eval mode's single output."""
        logits = self(images)
        return torch.softmax(logits.float(), dim=1)[:, -1]

    def class_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, num_classes, R, R) softmax over the classes (background first), in eval mode's single output."""
        return torch.softmax(self(images).float(), dim=1)
