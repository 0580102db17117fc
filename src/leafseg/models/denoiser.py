"""The denoiser f_theta: a diffusers ``UNet2DModel`` on concat[z^x, z_t^y] (2C channels in, C out).

Two LEAF-specific pieces live here:

* :func:`widen_input_conv` turns a pretrained C-channel UNet into a 2C-channel one by repeating the first conv's
  weights twice along the input axis and multiplying by 0.5, so the widened UNet on [z, z] equals the original on z;
* :class:`DownBlockFeatures` captures the hidden state after a down block (the alignment target of the projector)
  with a forward hook, so the UNet itself is unchanged and nothing of it remains at inference.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DModel
from diffusers.models.resnet import ResnetBlock2D

from .ldm_unet import load_converted_unet


def build_unet(latent_channels: int, sample_size: int, block_out_channels=(64, 128, 256), layers_per_block: int = 1,
               down_block_types=None, up_block_types=None, attention_head_dim: int = 8, norm_num_groups: int = 32,
               dropout: float = 0.0, mask_groups: int = 1, **extra) -> UNet2DModel:
    """A fresh UNet with 2C input and C output channels (``mask_groups`` K structures: C + K x C in, K x C out).
    Block types default to resnet blocks with attention at every level but the first, LDM-style (scale-shift norm,
    resnet up/down-sampling)."""
    n = len(block_out_channels)
    down = list(down_block_types or ["DownBlock2D"] + ["AttnDownBlock2D"] * (n - 1))
    up = list(up_block_types or ["AttnUpBlock2D"] * (n - 1) + ["UpBlock2D"])
    return UNet2DModel(
        sample_size=sample_size, in_channels=(1 + mask_groups) * latent_channels,
        out_channels=mask_groups * latent_channels,
        block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
        down_block_types=tuple(down), up_block_types=tuple(up), attention_head_dim=attention_head_dim,
        norm_num_groups=norm_num_groups, dropout=dropout, **extra,
    )


def widen_input_conv(unet: UNet2DModel) -> UNet2DModel:
    """C -> 2C input channels: W' = [W, W] * 0.5, bias unchanged, so f'([z, z]) == f(z)."""
    old = unet.conv_in
    new = torch.nn.Conv2d(2 * old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          bias=old.bias is not None).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(torch.cat([old.weight, old.weight], dim=1) * 0.5)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=2 * old.in_channels)
    return unet


def load_pretrained_unet(path: str | Path, latent_channels: int, sample_size: int | None = None) -> UNet2DModel:
    """Load a diffusers UNet2DModel folder (e.g. converted LDM weights), widening it to 2C inputs if needed."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder / 'config.json'}: no diffusers UNet2DModel folder here")
    unet = load_converted_unet(folder)
    c_in, c_out = unet.config.in_channels, unet.config.out_channels
    if c_out != latent_channels or c_in not in (latent_channels, 2 * latent_channels):
        raise ValueError(
            f"{folder}: UNet has {c_in} input / {c_out} output channels, but the autoencoder's latent has "
            f"{latent_channels}; need {latent_channels} (widened to {2 * latent_channels}) or {2 * latent_channels} in"
        )
    if c_in == latent_channels:
        unet = widen_input_conv(unet)
    if sample_size is not None:
        unet.register_to_config(sample_size=sample_size)
    return unet


def set_unet_dropout(unet: UNet2DModel, p: float) -> UNet2DModel:
    """Dropout probability ``p`` in every res block (LDM's ``dropout``), recorded in the config, so a pretrained UNet
    (built with the dropout of its own training) fine-tunes with the configured one."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"unet.dropout must be in [0, 1), got {p}")
    for module in unet.modules():
        if isinstance(module, ResnetBlock2D):
            module.dropout.p = p
    unet.register_to_config(dropout=p)
    return unet


def down_block_grids(unet: UNet2DModel, latent_size: int) -> list[int]:
    """Spatial size after each down block for a square latent of side ``latent_size``."""
    sizes, size = [], latent_size
    for block in unet.down_blocks:
        if getattr(block, "downsamplers", None) is not None:
            size = (size + 1) // 2
        sizes.append(size)
    return sizes


class DownBlockFeatures:
    """Context manager capturing the hidden state after ``unet.down_blocks[index]``.

    >>> with DownBlockFeatures(unet, 0) as features:
    ...     out = unet(x, t).sample
    >>> h = features.value  # (B, channels, h, w)
    """

    def __init__(self, unet: UNet2DModel, index: int):
        if not 0 <= index < len(unet.down_blocks):
            raise ValueError(f"alignment layer {index} out of range: the UNet has {len(unet.down_blocks)} down blocks")
        self.block = unet.down_blocks[index]
        self.value: torch.Tensor | None = None
        self._handle = None

    def _hook(self, module, inputs, output):
        self.value = output[0] if isinstance(output, tuple) else output

    def __enter__(self) -> "DownBlockFeatures":
        self._handle = self.block.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
