"""Convert CompVis LDM checkpoint files and write the diffusers folders atomically (``leafseg convert-ldm``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..files import atomic_dir
from .checkpoint import load_checkpoint
from .kl_vae import convert_kl_vae, kl_vae_config_from_state_dict
from .ldm_unet import convert_ldm_unet, ldm_unet_config_from_state_dict

__all__ = ["convert_ldm_checkpoints"]


def _save_atomically(model, target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists (use overwrite / --overwrite to replace it)")
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)


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
