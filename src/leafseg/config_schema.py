"""The configuration's types: OmegaConf structured configs from dataclasses, one per section, with enums for the
choices. :func:`leafseg.config.load_config` lays ``configs/default.yaml`` (which holds every value and says what
each means) over :class:`LeafSegConfig`, so that a wrong key, type or choice is one error naming the key, the value
and what is allowed, before anything is read, cached or written; :func:`check_values` adds the ranges a type cannot
say. The values live in the YAML only (one place); the fields here say what a value may be, and whether it may
change when a run is resumed (``resumable``, instead of a list kept in step by hand).
"""

from __future__ import annotations

import math
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

# ------------------------------------------------------------------------------------------------- choices
# StrEnum members compare, hash, format and serialise as their strings, so code reading ``cfg.train.lr_schedule``
# sees "cosine"; OmegaConf matches a given string against the member names, which are the values.


def _choices(name: str, values: tuple[str, ...]) -> type[StrEnum]:
    return StrEnum(name, {v: v for v in values})  # names may hold '-' (dataset layouts)


Method = _choices("Method", ("leaf", "supervised_unet", "dynunet", "basicunet"))
Device = _choices("Device", ("auto", "cpu", "cuda"))
FrozenTargets = _choices("FrozenTargets", ("cache", "on_the_fly"))
CacheBackend = _choices("CacheBackend", ("torch", "onnx"))
Layout = _choices("Layout", ("folder", "cvc-clinicdb", "kvasir-seg", "isic2018", "qata-cov19", "refuge2"))
Sampling = _choices("Sampling", ("image", "dataset"))
VolumeSlices = _choices("VolumeSlices", ("all", "foreground"))
IntensityMode = _choices("IntensityMode", ("percentile", "minmax", "window"))
AutoencoderKind = _choices("AutoencoderKind", ("taef2", "diffusers", "kl"))
PredictionType = _choices("PredictionType", ("sample", "epsilon", "v_prediction"))
BetaSchedule = _choices("BetaSchedule", ("linear", "scaled_linear", "squaredcos_cap_v2"))
TimestepSpacing = _choices("TimestepSpacing", ("leading", "trailing", "linspace"))
LossKind = _choices("LossKind", ("l1", "l2"))
FlipTokens = _choices("FlipTokens", ("recompute", "mirror"))
AugmentedViews = _choices("AugmentedViews", ("teacher", "skip"))
DropoutSampler = _choices("DropoutSampler", ("torch", "words16"))
NegativeMode = _choices("NegativeMode", ("crop", "inpaint"))
Condition = _choices("Condition", ("autoencoder", "lite_medsam", "both"))
TeacherDtype = _choices("TeacherDtype", ("float32", "bfloat16"))
LRSchedule = _choices("LRSchedule", ("constant_with_warmup", "cosine", "linear"))
MixedPrecision = _choices("MixedPrecision", ("auto", "no", "bf16", "fp16"))


def _value(resumable: bool = False) -> Any:
    """A field whose value comes from default.yaml. ``resumable``: it may differ when a run is resumed (where things
    are, how the run is executed and reported). Everything else decides what is learned: a resumed run that changed
    it would be neither the old run nor a new one (a changed train.lr would be overwritten by the checkpoint's
    optimiser state)."""
    return field(default=MISSING, metadata={"resumable": resumable})


def _section(cls: type, resumable: bool = False) -> Any:
    return field(default_factory=cls, metadata={"resumable": resumable})


# ------------------------------------------------------------------------------------------------ sections

@dataclass
class RunConfig:
    """``run``: the run folder, seed, device and where the frozen targets come from."""

    output_dir: str = _value(resumable=True)
    seed: int = _value()
    device: Device = _value(resumable=True)
    cache_dir: Optional[str] = _value(resumable=True)
    frozen_targets: FrozenTargets = _value()
    cache_backend: CacheBackend = _value(resumable=True)


@dataclass
class SplitConfig:
    """``data.split``: split fractions (null: the layout's) and the seed of a split made from them."""

    train: Optional[float] = _value()
    val: Optional[float] = _value()
    test: Optional[float] = _value()
    seed: int = _value()


@dataclass
class ColourJitterConfig:
    """``data.colour_jitter``: kornia ColorJitter strengths (0 everywhere: off)."""

    brightness: float = _value()
    contrast: float = _value()
    saturation: float = _value()
    hue: float = _value()


@dataclass
class AugmentConfig:
    """``data.augment``: geometric and intensity augmentation, negative crops, scope overlays."""

    p: float = _value()
    crop_scale: list[float] = _value()
    rotate: float = _value()
    elastic: float = _value()
    gamma: list[float] = _value()
    blur: float = _value()
    noise: float = _value()
    negative: float = _value()
    negative_min: float = _value()
    negative_mode: NegativeMode = _value()
    negative_dilate: float = _value()
    overlay: float = _value()


@dataclass
class IntensityConfig:
    """``data.intensity``: how volumes become 8-bit slices."""

    mode: IntensityMode = _value()
    percentiles: list[float] = _value()
    window: list[float] = _value()


@dataclass
class SourceConfig:
    """One entry of ``data.sources``: another dataset trained together with ``data.root``. Its defaults are here
    (an entry gives only what differs): its folder's name, layout ``folder``, split file ``RUN/split-NAME.json``."""

    root: str = MISSING
    name: Optional[str] = None
    layout: Layout = Layout["folder"]
    split_file: Optional[str] = None
    images: str = "images"
    masks: str = "masks"


@dataclass
class DataConfig:
    """``data``: the dataset(s), split, resolution, flips and augmentation."""

    root: str = _value(resumable=True)
    layout: Layout = _value()
    images: str = _value()
    masks: str = _value()
    labels: Optional[str] = _value()
    split_file: Optional[str] = _value(resumable=True)
    split: SplitConfig = _section(SplitConfig)
    sources: list[SourceConfig] = _value()
    resolution: int = _value()
    hflip: bool = _value()
    vflip: bool = _value()
    colour_jitter: ColourJitterConfig = _section(ColourJitterConfig)
    augment: AugmentConfig = _section(AugmentConfig)
    sampling: Sampling = _value()
    num_workers: int = _value(resumable=True)
    slice_axis: int = _value()
    volume_slices: VolumeSlices = _value()
    intensity: IntensityConfig = _section(IntensityConfig)


@dataclass
class AutoencoderConfig:
    """``autoencoder``: the frozen mask autoencoder."""

    kind: AutoencoderKind = _value()
    path: Optional[str] = _value(resumable=True)
    config: Any = _value()  # kind=kl only: AutoencoderKL arguments
    scaling_factor: Optional[float] = _value()


@dataclass
class ImageEncoderConfig:
    """``image_encoder``: the trainable copy of the autoencoder's encoder, and the optional semantic branch."""

    dropout: float = _value()
    dropout_sampler: DropoutSampler = _value()
    frozen_layers: int = _value()
    condition: Condition = _value()
    semantic_size: int = _value()
    semantic_hidden: int = _value()


@dataclass
class UNetConfig:
    """``unet``: the denoising UNet (diffusers UNet2DModel arguments, or a pretrained folder)."""

    pretrained: Optional[str] = _value(resumable=True)
    block_out_channels: list[int] = _value()
    layers_per_block: int = _value()
    down_block_types: list[str] = _value()
    up_block_types: list[str] = _value()
    attention_head_dim: int = _value()
    norm_num_groups: int = _value()
    resnet_time_scale_shift: str = _value()
    downsample_type: str = _value()
    upsample_type: str = _value()
    dropout: float = _value()


@dataclass
class DiffusionConfig:
    """``diffusion``: the DDIM schedule and what the UNet predicts."""

    prediction_type: PredictionType = _value()
    num_train_timesteps: int = _value()
    beta_start: float = _value()
    beta_end: float = _value()
    beta_schedule: BetaSchedule = _value()
    clip_sample: bool = _value()
    clip_sample_range: float = _value()
    timestep_spacing: TimestepSpacing = _value()


@dataclass
class LossConfig:
    """``loss``: the denoising loss."""

    kind: LossKind = _value()


@dataclass
class AlignConfig:
    """``align``: feature distillation from the frozen teacher."""

    enabled: bool = _value()
    weight: float = _value()
    teacher: str = _value()  # a name in leafseg.models.teachers.TEACHERS (open: a plug-in may register one)
    teacher_layer: str = _value()
    teacher_checkpoint: Optional[str] = _value(resumable=True)
    teacher_image_size: int = _value()
    flip_tokens: FlipTokens = _value()
    layer: int = _value()
    projector_dim: int = _value()
    reference_batch_quirk: bool = _value()
    teacher_antialias: bool = _value()
    teacher_dtype: TeacherDtype = _value()
    cache: bool = _value()
    augmented_views: AugmentedViews = _value()


@dataclass
class EMAConfig:
    """``train.ema``: diffusers EMAModel of the trained network."""

    enabled: bool = _value()
    decay: float = _value()
    warmup: bool = _value()
    power: float = _value()


@dataclass
class TrainConfig:
    """``train``: optimiser, schedule, steps or time budget, validation and checkpoints."""

    batch_size: int = _value()
    max_steps: int = _value(resumable=True)
    time_budget_min: Optional[float] = _value()
    lr: float = _value()
    weight_decay: float = _value()
    adam_betas: list[float] = _value()
    warmup_steps: int = _value()
    lr_schedule: LRSchedule = _value()
    grad_clip: Optional[float] = _value()
    mixed_precision: MixedPrecision = _value(resumable=True)
    ema: EMAConfig = _section(EMAConfig)
    log_every: int = _value(resumable=True)
    val_every: int = _value(resumable=True)
    checkpoint_every: int = _value(resumable=True)
    val_max_images: Optional[int] = _value()
    val_at_start: bool = _value(resumable=True)
    log_samples: bool = _value(resumable=True)
    num_threads: Optional[int] = _value(resumable=True)
    compile: bool = _value(resumable=True)


@dataclass
class BaselineUNetConfig:
    """``baseline.unet``: the plain UNet baseline's network."""

    block_out_channels: list[int] = _value()
    layers_per_block: int = _value()
    attention_levels: int = _value()
    norm_num_groups: int = _value()
    attention_head_dim: int = _value()


@dataclass
class BaselineConfig:
    """``baseline``: method=supervised_unet."""

    unet: BaselineUNetConfig = _section(BaselineUNetConfig)
    dice_weight: float = _value()
    bce_weight: float = _value()


@dataclass
class DynUNetConfig:
    """``peers.dynunet``: nnU-Net's 2D topology in MONAI's DynUNet."""

    base_features: int = _value()
    max_features: int = _value()
    deep_supervision: bool = _value()


@dataclass
class BasicUNetConfig:
    """``peers.basicunet``: MONAI's BasicUNet."""

    features: list[int] = _value()


@dataclass
class PeersConfig:
    """``peers``: method=dynunet | basicunet, trained as nnU-Net trains."""

    dynunet: DynUNetConfig = _section(DynUNetConfig)
    basicunet: BasicUNetConfig = _section(BasicUNetConfig)
    zscore_input: bool = _value()
    batch_dice: bool = _value()
    dice_weight: float = _value()
    ce_weight: float = _value()


@dataclass
class LeafSegConfig:
    """Every key of a leafseg configuration, by section; the values and what each means are in
    ``configs/default.yaml``. ``leafseg.load_config`` returns an OmegaConf config typed by this class.

    Attributes:
        method: what is trained: ``leaf``, the ``supervised_unet`` baseline, or a MONAI peer (``dynunet``,
            ``basicunet``).
        run: run folder, seed, device, caches of the frozen targets (:class:`RunConfig`).
        data: dataset(s), split, resolution, flips, augmentation, volumes (:class:`DataConfig`).
        autoencoder: the frozen mask autoencoder (:class:`AutoencoderConfig`).
        image_encoder: the trainable image encoder (:class:`ImageEncoderConfig`).
        unet: the denoising UNet (:class:`UNetConfig`).
        diffusion: DDIM schedule and parameterisation (:class:`DiffusionConfig`).
        loss: the denoising loss (:class:`LossConfig`).
        align: feature distillation from the frozen teacher (:class:`AlignConfig`).
        train: optimiser, steps or time budget, EMA, validation, checkpoints (:class:`TrainConfig`).
        baseline: the plain UNet baseline (:class:`BaselineConfig`).
        peers: the MONAI peers (:class:`PeersConfig`).
    """

    method: Method = _value()
    run: RunConfig = _section(RunConfig)
    data: DataConfig = _section(DataConfig)
    autoencoder: AutoencoderConfig = _section(AutoencoderConfig)
    image_encoder: ImageEncoderConfig = _section(ImageEncoderConfig)
    unet: UNetConfig = _section(UNetConfig)
    diffusion: DiffusionConfig = _section(DiffusionConfig)
    loss: LossConfig = _section(LossConfig)
    align: AlignConfig = _section(AlignConfig)
    train: TrainConfig = _section(TrainConfig)
    baseline: BaselineConfig = _section(BaselineConfig)
    peers: PeersConfig = _section(PeersConfig)


def resumable_keys(schema: type = LeafSegConfig, prefix: str = "") -> frozenset[str]:
    """The dotted keys a resumed run may change (fields marked ``resumable``)."""
    keys: set[str] = set()
    for f in fields(schema):
        if f.metadata.get("resumable"):
            keys.add(prefix + f.name)
        if f.default_factory is not NO_DEFAULT and is_dataclass(f.default_factory):
            keys |= resumable_keys(f.default_factory, f"{prefix}{f.name}.")
    return frozenset(keys)


# ------------------------------------------------------------------------------------------------- ranges

MIN_WARMUP = 10  # steps timed before the time budget decides (see leafseg.training.budget)

# train.* numbers with their smallest value (int: >= it; float: > it)
TRAIN_NUMBERS = {"max_steps": (int, 1), "batch_size": (int, 1), "val_every": (int, 1), "checkpoint_every": (int, 1),
                 "log_every": (int, 1), "warmup_steps": (int, 0), "lr": (float, 0.0)}


def check_values(cfg: DictConfig) -> None:
    """The ranges a type cannot state, one error naming the key, the value and what is allowed. Called by
    ``load_config`` and again when a run starts (a config may be changed in Python in between)."""
    check_train_numbers(cfg.train)
    check_budget_config(cfg.train)
    check_image_encoder(cfg.image_encoder)


def check_image_encoder(ic: DictConfig) -> None:
    """The semantic branch's sizes: TinyViT needs at least 16 px, the adapter at least one channel."""
    if int(ic.semantic_size) < 16:
        raise ValueError(f"image_encoder.semantic_size must be at least 16 (pixels), got {ic.semantic_size}")
    if int(ic.semantic_hidden) < 1:
        raise ValueError(f"image_encoder.semantic_hidden must be at least 1, got {ic.semantic_hidden}")


def check_train_numbers(tc: DictConfig) -> None:
    """One clear error for a train.* count or rate that is not a number of the right kind and size (``lr=abc``,
    ``batch_size=0``, ``val_every=0``, ``max_steps=0``), before anything is decoded, cached or written."""
    for key, (kind, least) in TRAIN_NUMBERS.items():
        value = tc.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and kind is int:
            ok = float(value).is_integer()
        if not ok or value < least or (kind is float and not value > least):
            what = "a whole number" if kind is int else "a finite number"
            bound = f">= {least}" if kind is int else f"> {least:g}"
            raise ValueError(f"train.{key} must be {what} {bound}, got {value!r}")


def check_budget_config(tc: DictConfig) -> None:
    """A clear error for a budget the trainer cannot keep."""
    budget = tc.get("time_budget_min")
    if budget is None:
        return
    if not float(budget) > 0:
        raise ValueError(f"train.time_budget_min must be a positive number of minutes or null, got {budget!r}")
    if int(tc.warmup_steps) < MIN_WARMUP:
        raise ValueError(f"train.time_budget_min needs train.warmup_steps >= {MIN_WARMUP} (the step count is decided "
                         f"from the warm-up's step time, before the LR schedule depends on it), got "
                         f"{tc.warmup_steps}")
    if int(tc.max_steps) <= int(tc.warmup_steps):
        raise ValueError(f"train.time_budget_min: train.max_steps ({tc.max_steps}) must exceed train.warmup_steps "
                         f"({tc.warmup_steps}), where the step count is decided")
