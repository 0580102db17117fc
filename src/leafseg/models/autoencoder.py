"""The frozen mask autoencoder behind one small interface.

LEAF encodes the ground-truth mask (replicated to 3 channels, in [-1, 1]) to a latent and decodes the predicted
latent back to a mask. Any of these models can play that part:

* diffusers ``AutoencoderKL`` (CompVis kl-f8 / Stable Diffusion VAEs: the paper's choice), input in [-1, 1];
* diffusers ``AutoencoderTiny`` (TAESD family as packaged by diffusers), input in [-1, 1];
* :class:`~leafseg.models.taef2.TAEF2` (FLUX.2 tiny autoencoder, our module), input in [0, 1].

The functions below hide those differences: :func:`encode` takes [-1, 1] images and returns *unscaled* latents
(the distribution's mode for KL models), :func:`decode` returns [-1, 1] images. Multiplying by
:func:`latent_scale` is left to the caller, as in LDM.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from ..files import user_cache
from .taef2 import TAEF2
from .weights import read_config

MaskAutoencoder = AutoencoderKL | AutoencoderTiny | TAEF2
#: the autoencoder families leafseg supports, by the short name the image encoder records
FAMILIES: dict[str, type] = {"kl": AutoencoderKL, "tiny": AutoencoderTiny, "taef2": TAEF2}


def family_of(ae) -> str:
    for name, cls in FAMILIES.items():
        if isinstance(ae, cls):
            return name
    names = ", ".join(c.__name__ for c in FAMILIES.values())
    raise TypeError(f"unsupported autoencoder {type(ae).__name__}; expected one of {names}")


def _check(ae) -> None:
    family_of(ae)


def latent_scale(ae: MaskAutoencoder) -> float:
    """The factor s with z = s * E(x) (LDM's scale_factor, diffusers' ``scaling_factor``)."""
    _check(ae)
    return float(ae.config.scaling_factor)


def latent_channels(ae: MaskAutoencoder) -> int:
    _check(ae)
    return int(ae.config.latent_channels)


def downscale_factor(ae: MaskAutoencoder) -> int:
    """Spatial reduction from image to latent (8 for every supported family's usual configs)."""
    _check(ae)
    if isinstance(ae, AutoencoderKL):
        return 2 ** (len(ae.config.block_out_channels) - 1)
    if isinstance(ae, AutoencoderTiny):
        # EncoderTiny: the first block keeps the resolution, every later block starts with a stride-2 conv.
        return 2 ** (len(ae.config.encoder_block_out_channels) - 1)
    return 8


def encode(ae: MaskAutoencoder, images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (B, 3, H, W) -> unscaled latents (B, C, H/f, W/f)."""
    _check(ae)
    if isinstance(ae, AutoencoderKL):
        return ae.encode(images).latent_dist.mode()
    if isinstance(ae, AutoencoderTiny):
        return ae.encode(images).latents
    return ae.encode((images + 1) / 2)


def decode(ae: MaskAutoencoder, latents: torch.Tensor) -> torch.Tensor:
    """Unscaled latents -> images in [-1, 1] (clamped)."""
    _check(ae)
    if isinstance(ae, (AutoencoderKL, AutoencoderTiny)):
        out = ae.decode(latents).sample
    else:
        out = ae.decode(latents) * 2 - 1
    return out.clamp(-1, 1)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module


#: sha256 of the published TAEF2 weight files (github.com/madebyollin/taesd, MIT), checked before they are loaded
TAEF2_SHA256 = {
    "taef2_encoder.pth": "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
    "taef2_decoder.pth": "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
}
TAEF2_SOURCE = "taef2_encoder.pth and taef2_decoder.pth from github.com/madebyollin/taesd (MIT)"


def taef2_folders() -> list[Path]:
    """Where TAEF2's two files are looked for when ``autoencoder.path`` is not set, in order:
    ``$LEAFSEG_WEIGHTS/taef2``, the user's cache (``$XDG_CACHE_HOME`` or ``~/.cache``, then ``leafseg/weights/taef2``)
    and ``$LEAFSEG_SHARED/weights/taef2``."""
    folders = []
    if os.environ.get("LEAFSEG_WEIGHTS"):
        folders.append(Path(os.environ["LEAFSEG_WEIGHTS"]) / "taef2")
    folders.append(user_cache() / "weights" / "taef2")
    if os.environ.get("LEAFSEG_SHARED"):
        folders.append(Path(os.environ["LEAFSEG_SHARED"]) / "weights" / "taef2")
    return [f.expanduser() for f in folders]


def autoencoder_folder(kind: str, path: str | Path | None) -> Path | None:
    """Where a mask autoencoder's weights are: ``path``, or for TAEF2 without one the first of
    :func:`taef2_folders` that holds both files; absolute, never relative to wherever a command happens to run. None
    for ``kl`` (built by leafseg)."""
    if kind == "kl":
        return None
    if path is None and kind == "taef2":
        looked = taef2_folders()
        found = [f for f in looked if all((f / name).is_file() for name in TAEF2_SHA256)]
        if not found:
            raise ValueError("TAEF2's weights were not found (autoencoder.path is not set; looked in "
                             f"{', '.join(str(f) for f in looked)}): copy {TAEF2_SOURCE} into {looked[0]}, "
                             "or set autoencoder.path to the folder that holds them")
        path = found[0]
    if path is None:
        raise ValueError(f"autoencoder.path is not set: give the {kind} autoencoder folder")
    return Path(path).expanduser().resolve()


def check_taef2_files(folder: Path) -> None:
    """Refuse TAEF2 weight files whose sha256 is not the published one (a truncated copy, another release, another
    file under the same name), naming the file and both digests."""
    import hashlib

    for name in TAEF2_SHA256:
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: not found (the TAEF2 folder must hold {TAEF2_SOURCE})")
    for name, expected in TAEF2_SHA256.items():
        file = folder / name
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        if digest != expected:
            raise ValueError(f"{file}: sha256 {digest} is not the published TAEF2 file's ({expected}); copy it "
                             f"again from {TAEF2_SOURCE.split(' from ')[1]}")


def load_autoencoder(kind: str, path: str | Path | None = None, config: dict | None = None,
                     scaling_factor: float | None = None) -> MaskAutoencoder:
    """Build the frozen mask autoencoder, offline.

    kind ``taef2``: ``path`` is a folder holding ``taef2_encoder.pth`` and ``taef2_decoder.pth`` (their sha256
    checked; None: looked for in :func:`taef2_folders`) or a diffusers folder written by ``save_pretrained``.
    kind ``diffusers``: ``path`` is a diffusers model folder (``AutoencoderKL`` or ``AutoencoderTiny``, picked from
    its config.json), e.g. a Stable Diffusion ``vae/`` folder. kind ``kl``: a randomly initialised ``AutoencoderKL``
    from ``config`` (for tests; or fitted by the demo).
    ``scaling_factor`` overrides the model's own.
    """
    if kind == "taef2":
        folder = autoencoder_folder(kind, path)  # without a path: the first of taef2_folders() holding the files
        if (folder / "config.json").is_file():  # a leafseg/diffusers folder (a saved model's copy)
            ae = TAEF2.from_pretrained(folder, local_files_only=True)
        else:
            check_taef2_files(folder)
            ae = TAEF2.from_taesd_weights(folder / "taef2_encoder.pth", folder / "taef2_decoder.pth")
    elif kind == "diffusers":
        if path is None:
            raise ValueError("autoencoder.kind=diffusers needs autoencoder.path (a diffusers model folder)")
        folder = Path(path)
        config_file = folder / "config.json"
        class_name = read_config(folder).get("_class_name", "AutoencoderKL")
        classes = {cls.__name__: cls for cls in FAMILIES.values()}
        if class_name not in classes:
            raise ValueError(f"{config_file}: unsupported autoencoder class {class_name!r}; expected {sorted(classes)}")
        ae = classes[class_name].from_pretrained(folder, local_files_only=True)
    elif kind == "kl":
        ae = AutoencoderKL(**dict(config or {}))
    else:
        raise ValueError(f"unknown autoencoder.kind {kind!r}; expected taef2, diffusers or kl")
    if scaling_factor is not None:
        ae.register_to_config(scaling_factor=float(scaling_factor))
    return freeze(ae)
