"""LDMUNet2DModel: a diffusers ``UNet2DModel`` with LDM's fixed attention head *count* (the converted LSUN-Churches
UNet has 192/384/768 channels with 8 heads: different head sizes per level, which ``UNet2DModel``'s one global
``attention_head_dim`` cannot express), and the loader that picks the class from a saved folder's config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffusers import UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (pipelines look up a component's base class
#                                                         in its module: lets pipelines holding LDMUNet2DModel load)

from .weights import read_config

__all__ = ["LDMUNet2DModel", "load_converted_unet", "unet_from_config"]


class LDMUNet2DModel(UNet2DModel):
    """``UNet2DModel`` plus ``num_attention_heads``: the LDM ``num_heads`` (a fixed head *count* for every attention
    layer, whatever its width). ``None`` behaves exactly like ``UNet2DModel`` (head size ``attention_head_dim``).
    Load saved folders with ``LDMUNet2DModel.from_pretrained`` (or :func:`load_converted_unet`): a plain
    ``UNet2DModel.from_pretrained`` would ignore ``num_attention_heads`` and use the wrong head split."""

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
        num_attention_heads: int | None = None,
    ):
        # the undecorated UNet2DModel.__init__: this class's decorator already registered the whole config
        UNet2DModel.__init__.__wrapped__(
            self, sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            center_input_sample=center_input_sample, time_embedding_type=time_embedding_type,
            time_embedding_dim=time_embedding_dim, freq_shift=freq_shift, flip_sin_to_cos=flip_sin_to_cos,
            down_block_types=down_block_types, mid_block_type=mid_block_type, up_block_types=up_block_types,
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            mid_block_scale_factor=mid_block_scale_factor, downsample_padding=downsample_padding,
            downsample_type=downsample_type, upsample_type=upsample_type, dropout=dropout, act_fn=act_fn,
            attention_head_dim=attention_head_dim, norm_num_groups=norm_num_groups,
            attn_norm_num_groups=attn_norm_num_groups, norm_eps=norm_eps,
            resnet_time_scale_shift=resnet_time_scale_shift, add_attention=add_attention,
            class_embed_type=class_embed_type, num_class_embeds=num_class_embeds,
            num_train_timesteps=num_train_timesteps,
        )
        if num_attention_heads is not None:
            for name, module in self.named_modules():
                if isinstance(module, Attention):
                    if module.inner_dim % num_attention_heads:
                        raise ValueError(f"{name}: {module.inner_dim} channels do not split into "
                                         f"{num_attention_heads} heads")
                    head_dim = module.inner_dim // num_attention_heads
                    module.heads = module.sliceable_head_dim = num_attention_heads
                    module.scale = head_dim ** -0.5 if module.scale_qk else 1.0


def unet_from_config(config: Mapping[str, Any]) -> UNet2DModel:
    """``LDMUNet2DModel`` if the config sets ``num_attention_heads``, else a plain ``UNet2DModel``."""
    config = dict(config)
    if config.get("num_attention_heads") is not None:
        return LDMUNet2DModel.from_config(config)
    config.pop("num_attention_heads", None)
    return UNet2DModel.from_config(config)


def load_converted_unet(path: str | os.PathLike, **kwargs) -> UNet2DModel:
    """Load a saved converted UNet folder with the right class (``LDMUNet2DModel`` when its config has
    ``num_attention_heads``); ``kwargs`` go to ``from_pretrained`` (``local_files_only=True`` by default)."""
    folder = Path(path)
    config = read_config(folder)
    cls = LDMUNet2DModel if config.get("num_attention_heads") is not None else UNet2DModel
    kwargs.setdefault("local_files_only", True)
    return cls.from_pretrained(folder, **kwargs)
