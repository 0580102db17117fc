"""DINOv2 (the paper's teacher) through transformers, loaded offline from a local folder."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import cached_sha256, refused_in
from .base import Teacher

__all__ = ["DINOV2_MODEL_TYPES", "DINOv2Teacher", "resample_position_embeddings"]

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

    # Long on purpose: every way a user-supplied folder can be wrong is checked here, in order, with its message.
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
        try:
            model, info = model_cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
        except Exception as err:  # a .bin pickle torch's weights-only loading refused: one line naming it
            refused = refused_in(err, [f for f in weight_files if Path(f).suffix == ".bin"])
            if refused is not None:
                raise refused from None
            raise
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

        digest = hashlib.sha256(cached_sha256(config_file).encode())
        for f in weight_files:
            digest.update(f"{f.name}:{cached_sha256(f)}".encode())
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
