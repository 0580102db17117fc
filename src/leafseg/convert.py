"""CompVis/LDM checkpoints -> diffusers ``UNet2DModel`` / ``AutoencoderKL``, offline and exact.

LEAF starts from the CompVis LDM kl-f8 autoencoder and the LDM LSUN-Churches-256 UNet (``openaimodel.UNetModel``
with scale-shift norm, resnet up/down-sampling, legacy attention heads). No CompVis code is used: this module is a
key/weight mapping onto stock diffusers blocks, derived from tensor names and shapes only, so it can be checked on a
list of names and shapes (``meta`` tensors) as well as run on real weights.

Semantics that have to match (all checked numerically against reference outputs of the original code):

* timestep embedding: LDM ``timestep_embedding`` is ``cat[cos, sin]`` with frequencies ``exp(-ln(1e4) i / half)``:
  diffusers ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)``;
* ``ResBlock`` with ``use_scale_shift_norm``: ``norm2(h) * (1 + scale) + shift`` with ``scale, shift = chunk(emb)``:
  ``ResnetBlock2D(time_embedding_norm="scale_shift")``; ``resblock_updown``: a ``ResBlock(down=True)`` /
  ``(up=True)`` (avg-pool / nearest, applied after norm+SiLU and to the skip path) is diffusers' ``down=True`` /
  ``up=True`` resnet (``downsample_type="resnet"``, ``ResnetDownsampleBlock2D`` for levels without attention);
* ``AttentionBlock`` (GroupNorm, conv1d ``qkv``, ``QKVAttentionLegacy``, conv1d ``proj_out``, residual): the fused
  ``qkv`` rows are laid out per head as ``(heads, 3, head_dim)``, so q/k/v are split per head, not in thirds
  (``use_new_attention_order=True`` checkpoints are ``(3, heads, head_dim)``: split in thirds). LDM's ``num_heads``
  is a fixed head *count* at every level (``num_head_channels=-1``), while ``UNet2DModel`` only has one global
  ``attention_head_dim``; when the count gives different head sizes per level (it does for LSUN-Churches:
  192/384/768 channels with 8 heads) the model is a :class:`LDMUNet2DModel`, a ``UNet2DModel`` whose one extra config
  entry ``num_attention_heads`` sets the head count of every attention layer (so it survives save/load);
* the middle block's attention has a GroupNorm: ``attn_norm_num_groups=32`` (diffusers drops it by default for
  ``scale_shift``); GroupNorm eps 1e-5 (UNet) / 1e-6 (VAE), 32 groups.

Keys that are not part of the converted network and are skipped on purpose: ``loss.*`` (autoencoder training loss:
discriminator, LPIPS, logvar), ``model_ema.*`` when converting the raw weights (``model.diffusion_model.*`` when
converting the EMA ones; ``model_ema.decay``/``num_updates`` always), the diffusion schedule buffers of
``LatentDiffusion`` (``betas``, ``alphas_cumprod``..., ``logvar``, ``scale_factor``) and the other components of a
whole ``LatentDiffusion`` checkpoint (``first_stage_model.*``/``cond_stage_model.*`` for the UNet, everything outside
``first_stage_model.`` for the VAE). Any other key that is not mapped is an error.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (pipelines look up a component's base class
#                                                         in its module: lets pipelines holding LDMUNet2DModel load)

__all__ = [
    "LDMUNet2DModel",
    "add_convert_ldm_parser",
    "check_kl_vae_mapping",
    "check_ldm_unet_mapping",
    "convert_kl_vae",
    "convert_ldm_checkpoints",
    "convert_ldm_unet",
    "kl_vae_config_from_state_dict",
    "ldm_unet_config_from_state_dict",
    "load_checkpoint",
    "load_converted_unet",
    "run_convert_ldm",
    "unet_from_config",
]

CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
LDM_VAE_SCALING_FACTOR = 0.18215
#: ``LatentDiffusion``/``DDPM`` buffers (noise schedule, learned logvar, latent scale) that no network needs.
LDM_SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "scale_factor", "lvlb_weights",
})
_UNET_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_VAE_PREFIXES = ("first_stage_model.", "vae.")
_EMA_BOOKKEEPING = ("model_ema.decay", "model_ema.num_updates")

Shape = tuple[int, ...]
Transform = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------------------------
# loading


class UnsafeCheckpointError(ValueError):
    """A pickle checkpoint that cannot be read without executing code (custom classes, functions...)."""


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, on CPU: ``.safetensors`` via safetensors, ``.ckpt/.pt/.pth/.bin`` via
    ``torch.load(weights_only=True)``. ``{"state_dict": ...}`` wrappers (Lightning) are unwrapped and non-tensor
    entries dropped. A pickle that needs code execution to load is refused (:class:`UnsafeCheckpointError`, a
    ``ValueError``); a missing file raises ``FileNotFoundError`` naming the path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise ValueError(f"{path}: not a file (expected a .safetensors or {'/'.join(CHECKPOINT_SUFFIXES)} checkpoint)")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own SafetensorError for corrupt headers
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    elif suffix in CHECKPOINT_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            found = re.search(r"GLOBAL ([\w.]+)", str(err))
            what = f" (it references {found.group(1)})" if found else ""
            raise UnsafeCheckpointError(
                f"{path}: refused: this pickle checkpoint can only be loaded by executing code{what}, and "
                "checkpoints are read with torch.load(weights_only=True), which accepts plain tensors and "
                "containers only. If you trust the file, re-save its state_dict (tensors only) or as .safetensors."
            ) from err
        except (RuntimeError, EOFError, OSError) as err:
            raise ValueError(f"{path}: not a readable torch checkpoint ({err})") from err
    else:
        raise ValueError(f"{path}: unknown checkpoint type {suffix!r}; expected .safetensors or "
                         f"{', '.join(CHECKPOINT_SUFFIXES)}")
    while isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path}: no tensors in this checkpoint")
    return tensors


# --------------------------------------------------------------------------------------------------------------
# the UNet model class


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
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: no diffusers UNet folder here")
    config = json.loads(config_file.read_text())
    cls = LDMUNet2DModel if config.get("num_attention_heads") is not None else UNet2DModel
    kwargs.setdefault("local_files_only", True)
    return cls.from_pretrained(folder, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# shared mapping machinery


def _shapes(sd: Mapping[str, Any]) -> dict[str, Shape]:
    """name -> shape for tensors (real or meta) or plain shape lists (e.g. from a JSON key list)."""
    return {k: tuple(int(n) for n in (v.shape if hasattr(v, "shape") else v)) for k, v in sd.items()}


@dataclass
class _KeyMap:
    """target key -> (source key, transform or None), plus the source keys skipped on purpose / left over."""

    component: str
    rules: dict[str, tuple[str, Transform | None]] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def add(self, target: str, source: str, transform: Transform | None = None) -> None:
        if target in self.rules:
            raise ValueError(f"{self.component}: {source} and {self.rules[target][0]} both map to {target}")
        self.rules[target] = (source, transform)


def _listing(keys: Sequence[str], limit: int = 40) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _validate(keymap: _KeyMap, source_shapes: Mapping[str, Shape], target_shapes: Mapping[str, Shape]) -> None:
    """Every source key used (or ignorable), every target key filled, no foreign target, shapes equal."""
    c = keymap.component
    if keymap.unused:
        raise ValueError(f"{c}: {len(keymap.unused)} checkpoint key(s) not used by the conversion: "
                         f"{_listing(keymap.unused)}")
    missing_sources = sorted({s for s, _ in keymap.rules.values() if s not in source_shapes})
    if missing_sources:
        raise ValueError(f"{c}: checkpoint lacks key(s) {_listing(missing_sources)}")
    foreign = [t for t in keymap.rules if t not in target_shapes]
    if foreign:
        raise ValueError(f"{c}: mapped key(s) that the diffusers model does not have: {_listing(foreign)}")
    missing = [t for t in target_shapes if t not in keymap.rules]
    if missing:
        raise ValueError(f"{c}: diffusers model key(s) left unfilled by the checkpoint: {_listing(missing)}")
    for target, (source, transform) in keymap.rules.items():
        shape = source_shapes[source]
        if transform is not None:
            try:
                shape = tuple(transform(torch.empty(shape, device="meta")).shape)
            except RuntimeError:  # e.g. a fused qkv whose rows do not split into the configured heads
                shape = None
        if shape != tuple(target_shapes[target]):
            raise ValueError(f"{c}: shape mismatch: checkpoint key {source} has shape {tuple(source_shapes[source])}"
                             + (f" -> {shape}" if shape is not None and shape != source_shapes[source] else "")
                             + f", but the diffusers model's {target} has shape {tuple(target_shapes[target])}")


def _build_loaded(model_factory: Callable[[], torch.nn.Module], keymap: _KeyMap,
                  sd: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """Build the model on ``meta``, validate the mapping against it, then assign the converted tensors."""
    with torch.device("meta"):
        model = model_factory()
    target_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _validate(keymap, _shapes(sd), target_shapes)
    state = {}
    for target, (source, transform) in keymap.rules.items():
        tensor = sd[source]
        if transform is not None:
            tensor = transform(tensor)
        state[target] = tensor.detach().clone(memory_format=torch.contiguous_format)
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise ValueError(f"{keymap.component}: tensors not initialised by the checkpoint: {_listing(leftover)}")
    return model.eval()


def _check_mapping(factory: Callable[[], torch.nn.Module], keymap: _KeyMap,
                   source_shapes: Mapping[str, Shape]) -> dict[str, str]:
    with torch.device("meta"):
        model = factory()
    _validate(keymap, source_shapes, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    return {t: s for t, (s, _) in keymap.rules.items()}


def _detect_prefix(keys: Sequence[str], prefixes: Sequence[str], anchor: str) -> str:
    for prefix in prefixes:
        if prefix + anchor in keys:
            return prefix
    if anchor in keys:
        return ""
    raise ValueError(f"not a recognised checkpoint: no {anchor!r} key (with or without prefix "
                     f"{', '.join(repr(p) for p in prefixes)})")


# --------------------------------------------------------------------------------------------------------------
# UNet: config


@dataclass(frozen=True)
class _UNetLayout:
    num_res_blocks: int
    levels: int


def _unet_relative(shapes: Mapping[str, Shape]) -> tuple[str, dict[str, Shape]]:
    prefix = _detect_prefix(list(shapes), _UNET_PREFIXES, "input_blocks.0.0.weight")
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
    _, rel = _unet_relative(_shapes(sd))
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


def _ldm_unet_keymap(shapes: Mapping[str, Shape], config: Mapping[str, Any], use_ema: bool = False,
                     use_new_attention_order: bool = False) -> _KeyMap:
    prefix, rel = _unet_relative(shapes)
    if not prefix:  # a bare UNet state dict: keep LatentDiffusion extras out of the UNet keys
        rel = {k: s for k, s in rel.items() if not _unet_ignorable(k, use_ema)}
    layout = _unet_layout(rel)
    n = layout.num_res_blocks
    levels = len(config["block_out_channels"])
    if levels != layout.levels or config["layers_per_block"] != n:
        raise ValueError(f"UNet: config has {levels} levels of {config['layers_per_block']} blocks, the checkpoint "
                         f"{layout.levels} of {n}")
    keymap = _KeyMap("UNet")

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
                             f"(e.g. {missing[0]}); its model_ema.* keys: {_listing(ema) if ema else 'none'}")
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
    shapes = _shapes(source_shapes)
    config = dict(config or ldm_unet_config_from_state_dict(shapes))
    keymap = _ldm_unet_keymap(shapes, config, use_ema, use_new_attention_order)
    return _check_mapping(lambda: unet_from_config(config), keymap, shapes)


def convert_ldm_unet(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None, use_ema: bool = False,
                     use_new_attention_order: bool = False) -> UNet2DModel:
    """A diffusers UNet (``LDMUNet2DModel`` where the LDM head count needs it, else ``UNet2DModel``) holding the
    weights of an LDM ``openaimodel.UNetModel`` state dict, in eval mode. ``use_ema``: take the ``model_ema.*``
    copies (LDM stores ``model.diffusion_model.a.b`` as ``model_ema.diffusion_modelab``). ``config``: default
    :func:`ldm_unet_config_from_state_dict` (8 heads). Raises ``ValueError`` on unused keys, unfilled model keys or
    shape mismatches."""
    shapes = _shapes(sd)
    config = dict(config or ldm_unet_config_from_state_dict(shapes))
    keymap = _ldm_unet_keymap(shapes, config, use_ema, use_new_attention_order)
    return _build_loaded(lambda: unet_from_config(config), keymap, sd)


# --------------------------------------------------------------------------------------------------------------
# VAE (kl-f8 and friends)


def _vae_relative(shapes: Mapping[str, Shape]) -> tuple[str, dict[str, Shape]]:
    prefix = _detect_prefix(list(shapes), _VAE_PREFIXES, "encoder.conv_in.weight")
    return prefix, {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}


def kl_vae_config_from_state_dict(sd: Mapping[str, Any], **overrides) -> dict[str, Any]:
    """The ``AutoencoderKL`` config of an LDM ``AutoencoderKL`` state dict (tensors or shapes; prefix
    ``first_stage_model.``, ``vae.`` or none), derived from its shapes. Overrides: ``sample_size`` (or LDM
    ``resolution``; default 256), ``scaling_factor`` (default: the checkpoint's ``scale_factor`` tensor if it has one,
    else 0.18215), ``norm_num_groups`` (32), or any other ``AutoencoderKL`` config key."""
    overrides = dict(overrides)
    if "resolution" in overrides:
        overrides.setdefault("sample_size", overrides.pop("resolution"))
    shapes = _shapes(sd)
    _, rel = _vae_relative(shapes)
    levels = len({int(k.split(".")[2]) for k in rel if k.startswith("encoder.down.")})
    if levels == 0:
        raise ValueError("VAE: no encoder.down.* blocks")
    level_attn = re.compile(r"(encoder\.down|decoder\.up)\.\d+\.attn\.")
    attn_in_levels = sorted({k.rsplit(".", 2)[0] for k in rel if level_attn.match(k)})
    if attn_in_levels:
        raise ValueError(f"VAE: attention inside encoder/decoder levels ({', '.join(attn_in_levels[:4])}...) is not "
                         "supported (kl-f8 has none)")
    layers = len({int(k.split(".")[4]) for k in rel if k.startswith("encoder.down.0.block.")})
    dec_layers = len({int(k.split(".")[4]) for k in rel if k.startswith("decoder.up.0.block.")})
    if dec_layers != layers + 1:
        raise ValueError(f"VAE: decoder levels have {dec_layers} blocks, expected {layers + 1} for an encoder with "
                         f"{layers}")
    channels = [rel[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in range(levels)]
    latent = rel["decoder.conv_in.weight"][1]
    moments = rel["encoder.conv_out.weight"][0]
    embed2 = rel["quant_conv.weight"][0]
    if moments != 2 * latent or embed2 != 2 * latent:
        raise ValueError(f"VAE: needs double_z and embed_dim == z_channels (diffusers AutoencoderKL); found encoder "
                         f"output {moments}, quant_conv output {embed2}, decoder input {latent}")
    scaling = LDM_VAE_SCALING_FACTOR
    scale_tensor = sd.get("scale_factor") if isinstance(sd, Mapping) else None
    if isinstance(scale_tensor, torch.Tensor) and scale_tensor.numel() == 1 and not scale_tensor.is_meta:
        scaling = float(scale_tensor)
    config: dict[str, Any] = {
        "in_channels": rel["encoder.conv_in.weight"][1],
        "out_channels": rel["decoder.conv_out.weight"][0],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "act_fn": "silu",
        "latent_channels": latent,
        "norm_num_groups": 32,
        "sample_size": 256,
        "scaling_factor": scaling,
        "force_upcast": True,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in rel,
    }
    known = set(AutoencoderKL._get_init_keys(AutoencoderKL)) - {"self"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"VAE: unknown config override(s) {unknown}")
    config.update(overrides)
    return config


def _kl_vae_keymap(shapes: Mapping[str, Shape], config: Mapping[str, Any]) -> _KeyMap:
    """Reuses diffusers' own ``convert_ldm_vae_checkpoint`` on ``meta`` tensors and reads back which checkpoint
    tensor (or conv->linear view of it) landed under which diffusers key."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    prefix, rel = _vae_relative(shapes)
    keymap = _KeyMap("VAE")
    for key in shapes:
        if not key.startswith(prefix) or key.startswith(prefix + "loss."):
            keymap.ignored.append(key)  # training loss, or the rest of a whole LatentDiffusion checkpoint
    rel = {k: s for k, s in rel.items() if not k.startswith("loss.")}
    tensors = {k: torch.empty(s, device="meta") for k, s in rel.items()}
    by_id = {id(t): k for k, t in tensors.items()}
    try:
        converted = convert_ldm_vae_checkpoint(tensors, dict(config))
    except (AttributeError, KeyError, TypeError, IndexError) as err:
        raise ValueError(f"VAE: checkpoint layout not recognised by the kl-f8 mapping ({err!r})") from err
    used = set()
    for target, tensor in converted.items():
        if tensor is None:
            continue
        source = by_id.get(id(tensor))
        if source is None and tensor._base is not None:
            source = by_id.get(id(tensor._base))
        if source is None:
            raise RuntimeError(f"VAE: cannot trace {target} back to a checkpoint tensor")
        transform = None
        if tuple(tensor.shape) != rel[source]:
            src_shape, shape = rel[source], tuple(tensor.shape)
            if src_shape[: len(shape)] != shape or any(d != 1 for d in src_shape[len(shape):]):
                raise RuntimeError(f"VAE: unexpected transform {src_shape} -> {shape} for {target}")
            transform = functools.partial(torch.reshape, shape=shape)
        keymap.add(target, prefix + source, transform)
        used.add(source)
    keymap.unused.extend(prefix + k for k in rel if k not in used)
    return keymap


def check_kl_vae_mapping(source_shapes: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Validate the VAE mapping on names and shapes only (a ``meta`` model). Returns diffusers key -> checkpoint key."""
    shapes = _shapes(source_shapes)
    config = dict(config or kl_vae_config_from_state_dict(shapes))
    return _check_mapping(lambda: AutoencoderKL.from_config(config), _kl_vae_keymap(shapes, config), shapes)


def convert_kl_vae(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None) -> AutoencoderKL:
    """A diffusers ``AutoencoderKL`` holding the weights of an LDM kl autoencoder state dict (``loss.*`` ignored;
    ``first_stage_model.`` prefix accepted), in eval mode. Raises ``ValueError`` on unused keys, unfilled model keys
    or shape mismatches."""
    shapes = _shapes(sd)
    config = dict(config or kl_vae_config_from_state_dict(sd))
    keymap = _kl_vae_keymap(shapes, config)
    return _build_loaded(lambda: AutoencoderKL.from_config(config), keymap, sd)


# --------------------------------------------------------------------------------------------------------------
# files and CLI


def _save_atomically(model, target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists (use overwrite / --overwrite to replace it)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        old = None
        if target.exists():
            old = tmp.with_name(tmp.name + ".old")  # unique: tmp is
            target.rename(old)
        tmp.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert_ldm_checkpoints(unet_path: str | os.PathLike | None = None, vae_path: str | os.PathLike | None = None,
                            out_dir: str | os.PathLike | None = None, use_ema: bool = False,
                            unet_overrides: Mapping[str, Any] | None = None,
                            vae_overrides: Mapping[str, Any] | None = None,
                            overwrite: bool = False) -> dict[str, Path]:
    """Convert LDM checkpoint file(s) and write diffusers folders ``out_dir/unet`` and/or ``out_dir/vae``
    (``save_pretrained``, safetensors). Both are converted before anything is written; each folder is written to a
    temporary folder beside it and renamed into place. ``unet_overrides`` go to
    :func:`ldm_unet_config_from_state_dict` (plus ``use_new_attention_order``), ``vae_overrides`` to
    :func:`kl_vae_config_from_state_dict`. Returns the written folders by name."""
    if out_dir is None:
        raise ValueError("out_dir is required")
    if unet_path is None and vae_path is None:
        raise ValueError("nothing to convert: give a UNet and/or a VAE checkpoint")
    out = Path(out_dir)
    names = [name for name, path in (("unet", unet_path), ("vae", vae_path)) if path is not None]
    for name in names:  # fail before the (slow) conversion; checked again before writing
        if (out / name).exists() and not overwrite:
            raise FileExistsError(f"{out / name}: already exists (use overwrite / --overwrite to replace it)")
    models = {}
    if unet_path is not None:
        unet_overrides = dict(unet_overrides or {})
        new_order = bool(unet_overrides.pop("use_new_attention_order", False))
        sd = load_checkpoint(unet_path)
        try:
            config = ldm_unet_config_from_state_dict(sd, **unet_overrides)
            models["unet"] = convert_ldm_unet(sd, config, use_ema=use_ema, use_new_attention_order=new_order)
        except ValueError as err:
            raise ValueError(f"{unet_path}: {err}") from err
        del sd
    if vae_path is not None:
        sd = load_checkpoint(vae_path)
        try:
            models["vae"] = convert_kl_vae(sd, kl_vae_config_from_state_dict(sd, **dict(vae_overrides or {})))
        except ValueError as err:
            raise ValueError(f"{vae_path}: {err}") from err
        del sd
    out.mkdir(parents=True, exist_ok=True)
    for name in models:
        if (out / name).exists() and not overwrite:
            raise FileExistsError(f"{out / name}: already exists (use overwrite / --overwrite to replace it)")
    written = {}
    for name, model in models.items():
        _save_atomically(model, out / name, overwrite)
        written[name] = out / name
    return written


def add_convert_ldm_parser(subparsers) -> argparse.ArgumentParser:
    """``convert-ldm``: CompVis/LDM checkpoints -> diffusers folders (``args.func = run_convert_ldm``)."""
    p = subparsers.add_parser(
        "convert-ldm", help="CompVis LDM UNet / kl-f8 autoencoder checkpoints -> diffusers unet/ and vae/ folders",
        description="Convert CompVis/LDM checkpoints (.ckpt/.pt/.pth/.bin read with weights_only=True, or "
                    ".safetensors) into diffusers UNet2DModel / AutoencoderKL folders OUT/unet and OUT/vae.")
    p.add_argument("--unet", default=None, help="LDM checkpoint with model.diffusion_model.* (UNet) weights")
    p.add_argument("--vae", default=None, help="LDM kl autoencoder checkpoint (or a LatentDiffusion one: "
                                               "first_stage_model.*)")
    p.add_argument("--out", required=True, help="output folder (gets unet/ and/or vae/)")
    p.add_argument("--use-ema", action="store_true", help="UNet: take the EMA weights (model_ema.*)")
    p.add_argument("--num-heads", type=int, default=None, help="UNet: LDM num_heads (default 8)")
    p.add_argument("--num-head-channels", type=int, default=None,
                   help="UNet: LDM num_head_channels (fixed head size; overrides --num-heads)")
    p.add_argument("--use-new-attention-order", action="store_true",
                   help="UNet: checkpoint used QKVAttention (use_new_attention_order=True) instead of the legacy one")
    p.add_argument("--sample-size", type=int, default=None, help="UNet latent size (default 32)")
    p.add_argument("--vae-sample-size", type=int, default=None, help="VAE image size (default 256)")
    p.add_argument("--scaling-factor", type=float, default=None,
                   help="VAE latent scaling factor (default: checkpoint scale_factor, else 0.18215)")
    p.add_argument("--overwrite", action="store_true", help="replace existing OUT/unet, OUT/vae")
    p.set_defaults(func=run_convert_ldm)
    return p


def run_convert_ldm(args) -> int:
    unet_overrides = {k: v for k, v in {"num_heads": args.num_heads, "num_head_channels": args.num_head_channels,
                                        "sample_size": args.sample_size}.items() if v is not None}
    if args.use_new_attention_order:
        unet_overrides["use_new_attention_order"] = True
    vae_overrides = {k: v for k, v in {"sample_size": args.vae_sample_size,
                                       "scaling_factor": args.scaling_factor}.items() if v is not None}
    if args.unet is None and args.vae is None:
        raise ValueError("give --unet and/or --vae")
    written = convert_ldm_checkpoints(args.unet, args.vae, args.out, use_ema=args.use_ema,
                                      unet_overrides=unet_overrides, vae_overrides=vae_overrides,
                                      overwrite=args.overwrite)
    for name, folder in written.items():
        print(f"wrote {name}: {folder}")
    return 0
