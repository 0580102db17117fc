"""CompVis kl-f8 (``AutoencoderKL``) checkpoint -> diffusers ``AutoencoderKL`` (see the package docstring)."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import AutoencoderKL

from .keymap import KeyMap, Shape, build_loaded, check_mapping, detect_prefix, shapes_of

__all__ = ["LDM_VAE_SCALING_FACTOR", "check_kl_vae_mapping", "convert_kl_vae", "kl_vae_config_from_state_dict"]

LDM_VAE_SCALING_FACTOR = 0.18215
_VAE_PREFIXES = ("first_stage_model.", "vae.")


def _vae_relative(shapes: Mapping[str, Shape]) -> tuple[str, dict[str, Shape]]:
    prefix = detect_prefix(list(shapes), _VAE_PREFIXES, "encoder.conv_in.weight")
    return prefix, {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}


def kl_vae_config_from_state_dict(sd: Mapping[str, Any], **overrides) -> dict[str, Any]:
    """The ``AutoencoderKL`` config of an LDM ``AutoencoderKL`` state dict (tensors or shapes; prefix
    ``first_stage_model.``, ``vae.`` or none), derived from its shapes. Overrides: ``sample_size`` (or LDM
    ``resolution``; default 256), ``scaling_factor`` (default: the checkpoint's ``scale_factor`` tensor if it has one,
    else 0.18215), ``norm_num_groups`` (32), or any other ``AutoencoderKL`` config key."""
    overrides = dict(overrides)
    if "resolution" in overrides:
        overrides.setdefault("sample_size", overrides.pop("resolution"))
    shapes = shapes_of(sd)
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


def _kl_vae_keymap(shapes: Mapping[str, Shape], config: Mapping[str, Any]) -> KeyMap:
    """Reuses diffusers' own ``convert_ldm_vae_checkpoint`` on ``meta`` tensors and reads back which checkpoint
    tensor (or conv->linear view of it) landed under which diffusers key."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    prefix, rel = _vae_relative(shapes)
    keymap = KeyMap("VAE")
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
    shapes = shapes_of(source_shapes)
    config = dict(config or kl_vae_config_from_state_dict(shapes))
    return check_mapping(lambda: AutoencoderKL.from_config(config), _kl_vae_keymap(shapes, config), shapes)


def convert_kl_vae(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None) -> AutoencoderKL:
    """A diffusers ``AutoencoderKL`` holding the weights of an LDM kl autoencoder state dict (``loss.*`` ignored;
    ``first_stage_model.`` prefix accepted), in eval mode. Raises ``ValueError`` on unused keys, unfilled model keys
    or shape mismatches."""
    shapes = shapes_of(sd)
    config = dict(config or kl_vae_config_from_state_dict(sd))
    keymap = _kl_vae_keymap(shapes, config)
    return build_loaded(lambda: AutoencoderKL.from_config(config), keymap, sd)
