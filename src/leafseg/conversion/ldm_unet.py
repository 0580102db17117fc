"""CompVis LDM ``openaimodel.UNetModel`` checkpoint -> diffusers ``UNet2DModel`` / :class:`LDMUNet2DModel`: the
architecture read off the key names and shapes, then every weight mapped (see the package docstring)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import reduce
from typing import Any

import torch
from diffusers import UNet2DModel

from ..models.ldm_unet import LDMUNet2DModel, unet_from_config
from .keymap import (LDM_SCHEDULE_BUFFERS, KeyMap, Shape, Transform, build_loaded, check_mapping, detect_prefix,
                     key_listing, shapes_of)

__all__ = ["check_ldm_unet_mapping", "convert_ldm_unet", "ldm_unet_config_from_state_dict"]

_UNET_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")


@dataclass(frozen=True)
class _UNetLayout:
    num_res_blocks: int
    levels: int


def _unet_relative(shapes: Mapping[str, Shape]) -> tuple[str, dict[str, Shape]]:
    prefix = detect_prefix(list(shapes), _UNET_PREFIXES, "input_blocks.0.0.weight")
    return prefix, {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}


def _block_kind(rel: Mapping[str, Shape], block: str) -> str | None:
    if f"{block}.in_layers.0.weight" in rel:
        return "res"
    if f"{block}.qkv.weight" in rel:
        return "attn"
    if f"{block}.op.weight" in rel:
        return "downconv"
    if f"{block}.conv.weight" in rel:
        return "upconv"
    return None


def _unet_layout(rel: Mapping[str, Shape]) -> _UNetLayout:
    n_in = len({int(k.split(".")[1]) for k in rel if k.startswith("input_blocks.")})
    n_out = len({int(k.split(".")[1]) for k in rel if k.startswith("output_blocks.")})
    ups = [k for k in range(n_out)
           if any(_block_kind(rel, f"output_blocks.{k}.{m}") in ("res", "upconv") for m in (1, 2))]
    n = ups[0] if ups else n_out - 1
    if n < 1 or n_out % (n + 1) or n_in != n_out:
        raise ValueError(f"UNet: cannot infer the block layout ({n_in} input blocks, {n_out} output blocks, "
                         f"upsampling at output blocks {ups})")
    levels = n_out // (n + 1)
    if ups != [i * (n + 1) + n for i in range(levels - 1)]:
        raise ValueError(f"UNet: upsampling at output blocks {ups} does not fit {levels} levels of {n} blocks")
    return _UNetLayout(num_res_blocks=n, levels=levels)


# Long on purpose: one pass over the checkpoint's key layout, read top to bottom like the LDM config it rebuilds.
def ldm_unet_config_from_state_dict(sd: Mapping[str, Any], **overrides) -> dict[str, Any]:
    """The diffusers UNet config of an LDM ``openaimodel.UNetModel`` state dict (tensors or shapes; key prefix
    ``model.diffusion_model.``, ``diffusion_model.`` or none), derived from its shapes.

    Derived: in/out channels, base channels, channel mult, layers per block, attention levels, mid-block attention,
    scale-shift norm, resnet vs conv up/down-sampling, time embedding width. Not derivable (overrides):
    ``num_heads`` (LDM head count, default 8) or ``num_head_channels`` (LDM fixed head size; wins over num_heads),
    ``image_size``/``sample_size`` (default 32, the kl-f8 latent of 256 px images), ``norm_num_groups`` (32); any other
    ``UNet2DModel`` config key may be overridden as is. With a head count that gives different head sizes per level
    the config has ``num_attention_heads`` (build it with :func:`unet_from_config` -> :class:`LDMUNet2DModel`)."""
    overrides = dict(overrides)
    num_heads = overrides.pop("num_heads", 8)
    num_head_channels = overrides.pop("num_head_channels", None)
    if num_head_channels is not None and num_head_channels <= 0:  # LDM's "-1 = use num_heads"
        num_head_channels = None
    if "image_size" in overrides:
        overrides.setdefault("sample_size", overrides.pop("image_size"))
    _, rel = _unet_relative(shapes_of(sd))
    layout = _unet_layout(rel)
    n, levels = layout.num_res_blocks, layout.levels

    base, in_channels = rel["input_blocks.0.0.weight"][:2]
    out_channels = rel["out.2.weight"][0]
    time_dim = rel["time_embed.0.weight"][0]
    channels, attn_levels = [], []
    for level in range(levels):
        first = 1 + level * (n + 1)
        channels.append(rel[f"input_blocks.{first}.0.out_layers.3.weight"][0])
        down_attn = [_block_kind(rel, f"input_blocks.{first + j}.1") == "attn" for j in range(n)]
        up_index = (levels - 1 - level) * (n + 1)
        up_attn = [_block_kind(rel, f"output_blocks.{up_index + j}.1") == "attn" for j in range(n + 1)]
        if len(set(down_attn + up_attn)) != 1:
            raise ValueError(f"UNet: level {level} has attention in some blocks only "
                             f"(input {down_attn}, output {up_attn}); diffusers blocks need all or none")
        attn_levels.append(down_attn[0])
    mid_attn = _block_kind(rel, "middle_block.1") == "attn"
    resample = "resnet"
    if levels > 1:
        kind = _block_kind(rel, f"input_blocks.{n + 1}.0")
        resample = {"res": "resnet", "downconv": "conv"}.get(kind)
        if resample is None:
            raise ValueError(f"UNet: input_blocks.{n + 1} is not a downsampling block")
    emb_out = rel["input_blocks.1.0.emb_layers.1.weight"][0]
    scale_shift = "scale_shift" if emb_out == 2 * channels[0] else "default"

    down_types, up_types = [], []
    for attn in attn_levels:
        if attn:
            down_types.append("AttnDownBlock2D")
        else:
            down_types.append("ResnetDownsampleBlock2D" if resample == "resnet" else "DownBlock2D")
    for attn in reversed(attn_levels):
        if attn:
            up_types.append("AttnUpBlock2D")
        else:
            up_types.append("ResnetUpsampleBlock2D" if resample == "resnet" else "UpBlock2D")

    widths = [c for c, a in zip(channels, attn_levels) if a] + ([channels[-1]] if mid_attn else [])
    num_attention_heads = None
    if num_head_channels is not None:
        head_dim = num_head_channels
    elif widths:
        bad = [w for w in widths if w % num_heads]
        if bad:
            raise ValueError(f"UNet: attention widths {bad} do not split into num_heads={num_heads} heads")
        head_dims = sorted({w // num_heads for w in widths})
        head_dim = reduce(math.gcd, head_dims)
        if len(head_dims) > 1:
            num_attention_heads = num_heads
    else:
        head_dim = 8
    bad = [w for w in widths if w % head_dim]
    if bad:
        raise ValueError(f"UNet: attention widths {bad} are not multiples of the head size {head_dim}")

    config: dict[str, Any] = {
        "sample_size": 32,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "time_embedding_dim": None if time_dim == 4 * base else time_dim,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": down_types,
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": up_types,
        "block_out_channels": channels,
        "layers_per_block": n,
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": resample,
        "upsample_type": resample,
        "dropout": 0.0,
        "act_fn": "silu",
        "attention_head_dim": head_dim,
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,
        "norm_eps": 1e-5,
        "resnet_time_scale_shift": scale_shift,
        "add_attention": mid_attn,
    }
    if num_attention_heads is not None:
        config["num_attention_heads"] = num_attention_heads
    known = set(LDMUNet2DModel._get_init_keys(LDMUNet2DModel)) - {"self"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"UNet: unknown config override(s) {unknown}")
    config.update(overrides)
    if config.get("num_attention_heads") is None:
        config.pop("num_attention_heads", None)
    return config


# --------------------------------------------------------------------------------------------------------------
# UNet: key mapping

_RES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.0": "norm2",
        "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_RES_RE = re.compile(r"(in_layers\.0|in_layers\.2|emb_layers\.1|out_layers\.0|out_layers\.3|skip_connection)\."
                     r"(weight|bias)")
_ATTN_RE = re.compile(r"(norm|qkv|proj_out)\.(weight|bias)")


def _squeeze_conv1d(t: torch.Tensor) -> torch.Tensor:
    return t[..., 0] if t.ndim == 3 else t


def _qkv_split(index: int, heads: int, legacy: bool) -> Transform:
    """q (0), k (1) or v (2) rows of a fused conv1d qkv weight (3C, C, 1) / bias (3C,)."""

    def split(t: torch.Tensor) -> torch.Tensor:
        t = _squeeze_conv1d(t)
        rest = t.shape[1:]
        width = t.shape[0] // 3
        if legacy:  # QKVAttentionLegacy: (heads, 3, head_dim) row layout
            return t.reshape(heads, 3, width // heads, *rest)[:, index].reshape(width, *rest)
        return t.reshape(3, width, *rest)[index]  # QKVAttention: (3, heads, head_dim)

    return split


# Long on purpose: the whole LDM -> diffusers key table in one place, block by block, so it can be read against
# both codebases; split up it would scatter the layout over helpers.
def _ldm_unet_keymap(shapes: Mapping[str, Shape], config: Mapping[str, Any], use_ema: bool = False,
                     use_new_attention_order: bool = False) -> KeyMap:
    prefix, rel = _unet_relative(shapes)
    if not prefix:  # a bare UNet state dict: keep LatentDiffusion extras out of the UNet keys
        rel = {k: s for k, s in rel.items() if not _unet_ignorable(k, use_ema)}
    layout = _unet_layout(rel)
    n = layout.num_res_blocks
    levels = len(config["block_out_channels"])
    if levels != layout.levels or config["layers_per_block"] != n:
        raise ValueError(f"UNet: config has {levels} levels of {config['layers_per_block']} blocks, the checkpoint "
                         f"{layout.levels} of {n}")
    keymap = KeyMap("UNet")

    def heads_of(width: int) -> int:
        if config.get("num_attention_heads") is not None:
            return int(config["num_attention_heads"])
        return width // int(config["attention_head_dim"] or width)

    def source_name(rel_key: str) -> str:
        if not use_ema:
            return prefix + rel_key
        if prefix != "model.diffusion_model.":
            raise ValueError("UNet: use_ema needs a LatentDiffusion checkpoint (model.diffusion_model.* and "
                             "model_ema.* keys)")
        return "model_ema." + ("diffusion_model." + rel_key).replace(".", "")

    def module_of(block: str, index: int, sub: int) -> tuple[str, str] | None:
        """(diffusers module path, kind) of LDM ``{block}.{index}.{sub}``."""
        kind = _block_kind(rel, f"{block}.{index}.{sub}")
        if block == "input_blocks":
            level, j = divmod(index - 1, n + 1)
            if j < n:
                return {0: (f"down_blocks.{level}.resnets.{j}", "res"),
                        1: (f"down_blocks.{level}.attentions.{j}", "attn")}.get(sub)
            return (f"down_blocks.{level}.downsamplers.0", kind) if sub == 0 else None
        if block == "middle_block":
            if config.get("add_attention", True):
                return {0: ("mid_block.resnets.0", "res"), 1: ("mid_block.attentions.0", "attn"),
                        2: ("mid_block.resnets.1", "res")}.get(sub)
            return {0: ("mid_block.resnets.0", "res"), 1: ("mid_block.resnets.1", "res")}.get(sub)
        level, j = divmod(index, n + 1)  # output_blocks: level = diffusers up block
        if sub == 0:
            return f"up_blocks.{level}.resnets.{j}", "res"
        if kind == "attn" and sub == 1:
            return f"up_blocks.{level}.attentions.{j}", "attn"
        if j == n and kind in ("res", "upconv"):
            return f"up_blocks.{level}.upsamplers.0", kind
        return None

    top = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
           "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
    block_re = re.compile(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)|(middle_block)\.(\d+)\.(.+)")
    for rel_key in rel:
        source = source_name(rel_key)
        head, _, param = rel_key.rpartition(".")
        if head in top and param in ("weight", "bias"):
            keymap.add(f"{top[head]}.{param}", source)
            continue
        m = block_re.fullmatch(rel_key)
        target = None
        if m:
            if m.group(5):
                block, index, sub, rest = "middle_block", 0, int(m.group(6)), m.group(7)
            else:
                block, index, sub, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
            located = module_of(block, index, sub) if not (block == "input_blocks" and index == 0) else None
            if located is not None:
                module, kind = located
                target = _module_targets(rest, module, kind, rel, f"{rel_key[: -len(rest)]}", heads_of,
                                         not use_new_attention_order)
        if target is None:
            keymap.unused.append(prefix + rel_key)
            continue
        for target_key, transform in target:
            keymap.add(target_key, source, transform)

    consumed = {source for source, _ in keymap.rules.values()}
    for key in shapes:
        if key in consumed or (prefix and key.startswith(prefix) and not use_ema) or (not prefix and key in rel):
            continue  # mapped, or a UNet key already reported as unused above
        if prefix and key.startswith(prefix):
            keymap.ignored.append(key)  # the raw weights, when converting the EMA copy
        elif _unet_ignorable(key, use_ema):
            keymap.ignored.append(key)
        else:
            keymap.unused.append(key)
    if use_ema:
        missing = sorted(s for s in consumed if s not in shapes)
        if missing:
            ema = [k for k in shapes if k.startswith("model_ema.")]
            raise ValueError(f"UNet: use_ema=True but the checkpoint has no EMA copy of {len(missing)} weight(s) "
                             f"(e.g. {missing[0]}); its model_ema.* keys: {key_listing(ema) if ema else 'none'}")
    return keymap


def _module_targets(rest: str, module: str, kind: str | None, rel: Mapping[str, Shape], block_prefix: str,
                    heads_of: Callable[[int], int], legacy: bool) -> list[tuple[str, Transform | None]] | None:
    if kind == "res":
        m = _RES_RE.fullmatch(rest)
        return [(f"{module}.{_RES[m.group(1)]}.{m.group(2)}", None)] if m else None
    if kind == "attn":
        m = _ATTN_RE.fullmatch(rest)
        if not m:
            return None
        part, param = m.groups()
        if part == "norm":
            return [(f"{module}.group_norm.{param}", None)]
        if part == "proj_out":
            return [(f"{module}.to_out.0.{param}", _squeeze_conv1d if param == "weight" else None)]
        width = rel[f"{block_prefix}qkv.weight"][0] // 3
        heads = heads_of(width)
        return [(f"{module}.to_{name}.{param}", _qkv_split(i, heads, legacy)) for i, name in enumerate("qkv")]
    if kind == "downconv" and rest in ("op.weight", "op.bias"):
        return [(f"{module}.conv.{rest[3:]}", None)]
    if kind == "upconv" and rest in ("conv.weight", "conv.bias"):
        return [(f"{module}.{rest}", None)]
    return None


def _unet_ignorable(key: str, use_ema: bool) -> bool:
    if key in _EMA_BOOKKEEPING or key in LDM_SCHEDULE_BUFFERS:
        return True
    if key.startswith("model_ema."):
        return not use_ema
    return key.startswith(("first_stage_model.", "cond_stage_model.", "loss."))


def check_ldm_unet_mapping(source_shapes: Mapping[str, Any], config: Mapping[str, Any] | None = None,
                           use_ema: bool = False, use_new_attention_order: bool = False) -> dict[str, str]:
    """Validate the UNet mapping on names and shapes only (a ``meta`` model): every checkpoint key used or
    ignorable, every model key filled, shapes equal. Returns diffusers key -> checkpoint key."""
    shapes = shapes_of(source_shapes)
    config = dict(config or ldm_unet_config_from_state_dict(shapes))
    keymap = _ldm_unet_keymap(shapes, config, use_ema, use_new_attention_order)
    return check_mapping(lambda: unet_from_config(config), keymap, shapes)


def convert_ldm_unet(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None, use_ema: bool = False,
                     use_new_attention_order: bool = False) -> UNet2DModel:
    """A diffusers UNet (``LDMUNet2DModel`` where the LDM head count needs it, else ``UNet2DModel``) holding the
    weights of an LDM ``openaimodel.UNetModel`` state dict, in eval mode. ``use_ema``: take the ``model_ema.*``
    copies (LDM stores ``model.diffusion_model.a.b`` as ``model_ema.diffusion_modelab``). ``config``: default
    :func:`ldm_unet_config_from_state_dict` (8 heads). Raises ``ValueError`` on unused keys, unfilled model keys or
    shape mismatches."""
    shapes = shapes_of(sd)
    config = dict(config or ldm_unet_config_from_state_dict(shapes))
    keymap = _ldm_unet_keymap(shapes, config, use_ema, use_new_attention_order)
    return build_loaded(lambda: unet_from_config(config), keymap, sd)
