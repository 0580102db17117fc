"""The configuration's types: OmegaConf structured configs from dataclasses, one per section, with enums for the
choices. :func:`leafseg.config.load_config` lays ``configs/default.yaml`` (which holds every value and says what
each means) over :class:`LeafSegConfig`, so that a wrong key, type or choice is one error naming the key, the value
and what is allowed, before anything is read, cached or written; :func:`check_values` adds the ranges a type cannot
say. The values live in the YAML only (one place); the fields here say what a value may be (its type, its choices,
its :class:`Range`), and whether it may change when a run is resumed (``resumable``, instead of a list kept in step
by hand). Objects built from one section (the augmentations) take the same values and checks through
:func:`leafseg.config.section_config`.
"""

from __future__ import annotations

import math
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields, is_dataclass
from enum import StrEnum
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, ListConfig

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
DropoutSampler = _choices("DropoutSampler", ("torch", "words16"))
NegativeMode = _choices("NegativeMode", ("crop", "inpaint"))
Condition = _choices("Condition", ("autoencoder", "lite_medsam", "both"))
TeacherDtype = _choices("TeacherDtype", ("float32", "bfloat16"))
LRSchedule = _choices("LRSchedule", ("constant_with_warmup", "cosine", "linear"))
MixedPrecision = _choices("MixedPrecision", ("auto", "no", "bf16", "fp16"))


@dataclass(frozen=True)
class Range:
    """The numbers a field may hold beyond its type: from ``low`` to ``high`` (either may be open-ended), ``low``
    itself excluded when ``low_open``; a whole number when ``integer``; ``pair``: a ``[lo, hi]`` list, both in the
    range and lo <= hi."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    integer: bool = False
    pair: bool = False

    def holds(self, value: Any) -> bool:
        values = list(value) if self.pair and isinstance(value, (list, tuple, ListConfig)) else [value]
        if self.pair and (len(values) != 2 or not all(map(_is_number, values)) or values[0] > values[1]):
            return False
        return all(self._holds_one(v) for v in values)

    def _holds_one(self, v: Any) -> bool:
        if not _is_number(v) or (self.integer and not float(v).is_integer()):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or v <= self.high

    def describe(self) -> str:
        what = "a whole number" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            bound = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        elif self.low is not None:
            bound = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            bound = f"<= {self.high:g}"
        return f"[lo, hi] with lo <= hi, both {bound}" if self.pair else f"{what} {bound}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _value(resumable: bool = False, within: Range | None = None) -> Any:
    """A field whose value comes from default.yaml. ``resumable``: it may differ when a run is resumed (where things
    are, how the run is executed and reported). Everything else decides what is learned: a resumed run that changed
    it would be neither the old run nor a new one (a changed train.lr would be overwritten by the checkpoint's
    optimiser state). ``within``: the range :func:`check_values` holds it to."""
    return field(default=MISSING, metadata={"resumable": resumable, "within": within})


UNIT = Range(0, 1)  # a probability or fraction
NON_NEGATIVE = Range(0)
COUNT = Range(1, integer=True)


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

    brightness: float = _value(within=UNIT)
    contrast: float = _value(within=UNIT)
    saturation: float = _value(within=UNIT)
    hue: float = _value(within=Range(0, 0.5))


@dataclass
class AugmentConfig:
    """``data.augment``: geometric and intensity augmentation, negatives."""

    p: float = _value(within=UNIT)
    crop_scale: list[float] = _value(within=Range(0, 1, low_open=True, pair=True))
    rotate: float = _value(within=Range(0, 180))
    elastic: float = _value(within=NON_NEGATIVE)
    gamma: list[float] = _value(within=Range(0, low_open=True, pair=True))
    blur: float = _value(within=NON_NEGATIVE)
    noise: float = _value(within=NON_NEGATIVE)
    negative: float = _value(within=UNIT)
    negative_min: float = _value(within=Range(0, 1, low_open=True))
    negative_mode: NegativeMode = _value()
    negative_dilate: float = _value(within=Range(0, 0.5))


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

    dropout: float = _value(within=Range(0, 1))
    dropout_sampler: DropoutSampler = _value()
    frozen_layers: int = _value(within=Range(0, integer=True))
    condition: Condition = _value()
    semantic_size: int = _value(within=Range(16, integer=True))  # pixels: TinyViT needs at least 16
    semantic_hidden: int = _value(within=COUNT)


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
    dropout: float = _value(within=Range(0, 1))


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

    batch_size: int = _value(within=COUNT)
    max_steps: int = _value(resumable=True, within=COUNT)
    time_budget_min: Optional[float] = _value()
    lr: float = _value(within=Range(0, low_open=True))
    weight_decay: float = _value(within=NON_NEGATIVE)
    adam_betas: list[float] = _value()
    warmup_steps: int = _value(within=Range(0, integer=True))
    lr_schedule: LRSchedule = _value()
    grad_clip: Optional[float] = _value()
    mixed_precision: MixedPrecision = _value(resumable=True)
    ema: EMAConfig = _section(EMAConfig)
    log_every: int = _value(resumable=True, within=COUNT)
    val_every: int = _value(resumable=True, within=COUNT)
    checkpoint_every: int = _value(resumable=True, within=COUNT)
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


# ------------------------------------------------------------------------------------------------ retired

#: keys that options which lost their experiments once had: the value that meant "off", and why they went. A config
#: or run folder that still holds the off value loads as before; any other value is refused, naming the key, since
#: the run it describes can no longer be reproduced.
RETIRED_KEYS = {
    "data.augment.overlay": (0.0, "scope overlays cost val Dice on both datasets and gained nothing on another "
                                  "centre (experiments/polyp-recipe)"),
    "align.augmented_views": ("teacher", "aligning only the unchanged views trained worse than aligning every view "
                                         "to the teacher's tokens of it (experiments/polyp-recipe)"),
}


def retired_key_error(key: str, value: Any, where: str) -> ValueError | None:
    """The error for a retired ``key`` set to ``value`` (None when it holds the off value, which is dropped)."""
    off, why = RETIRED_KEYS[key]
    if value == off:
        return None
    return ValueError(f"{key}{where}: this option was removed ({why}); only its off value {off!r} is still read, "
                      f"got {value!r}")


# ------------------------------------------------------------------------------------------------- ranges

MIN_WARMUP = 10  # steps timed before the time budget decides (see leafseg.training.budget)

def check_values(cfg: DictConfig) -> None:
    """Every field's :class:`Range`, then what spans several fields; one error naming the key, the value and what
    is allowed. Called by ``load_config`` and again when a run starts (a config may be changed in Python in
    between)."""
    check_ranges(cfg, LeafSegConfig)
    check_budget_config(cfg.train)


def check_ranges(section: DictConfig, schema: type, prefix: str = "") -> None:
    """The ranges of ``section`` (typed by the dataclass ``schema``, dotted name ``prefix``) and its subsections."""
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        if f.default_factory is not NO_DEFAULT and is_dataclass(f.default_factory):
            check_ranges(section[f.name], f.default_factory, key + ".")
        elif (within := f.metadata.get("within")) is not None:
            value = section[f.name]
            if value is not None and not within.holds(value):
                shown = list(value) if isinstance(value, (list, tuple, ListConfig)) else value
                raise ValueError(f"{key} must be {within.describe()}, got {shown!r}")


def schema_of(key: str) -> type:
    """The dataclass of the section at dotted ``key`` (``"data.augment"`` -> :class:`AugmentConfig`)."""
    schema: type = LeafSegConfig
    for part in key.split("."):
        match = [f for f in fields(schema) if f.name == part and f.default_factory is not NO_DEFAULT]
        if not match or not is_dataclass(match[0].default_factory):
            raise KeyError(f"{key}: not a section of the configuration")
        schema = match[0].default_factory
    return schema


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
