"""The mapping machinery shared by the converters: target key -> (source key, transform), validated against the
target model's keys and shapes before any weight is copied."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..models.weights import listing

Shape = tuple[int, ...]
Transform = Callable[[torch.Tensor], torch.Tensor]

#: ``LatentDiffusion``/``DDPM`` buffers (noise schedule, learned logvar, latent scale) that no network needs.
LDM_SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "scale_factor", "lvlb_weights",
})


def shapes_of(sd: Mapping[str, Any]) -> dict[str, Shape]:
    """name -> shape for tensors (real or meta) or plain shape lists (e.g. from a JSON key list)."""
    return {k: tuple(int(n) for n in (v.shape if hasattr(v, "shape") else v)) for k, v in sd.items()}


@dataclass
class KeyMap:
    """target key -> (source key, transform or None), plus the source keys skipped on purpose / left over."""

    component: str
    rules: dict[str, tuple[str, Transform | None]] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def add(self, target: str, source: str, transform: Transform | None = None) -> None:
        if target in self.rules:
            raise ValueError(f"{self.component}: {source} and {self.rules[target][0]} both map to {target}")
        self.rules[target] = (source, transform)


def key_listing(keys: Sequence[str], limit: int = 40) -> str:
    return listing(sorted(keys), limit)


def validate_mapping(keymap: KeyMap, source_shapes: Mapping[str, Shape], target_shapes: Mapping[str, Shape]) -> None:
    """Every source key used (or ignorable), every target key filled, no foreign target, shapes equal."""
    c = keymap.component
    if keymap.unused:
        raise ValueError(f"{c}: {len(keymap.unused)} checkpoint key(s) not used by the conversion: "
                         f"{key_listing(keymap.unused)}")
    missing_sources = sorted({s for s, _ in keymap.rules.values() if s not in source_shapes})
    if missing_sources:
        raise ValueError(f"{c}: checkpoint lacks key(s) {key_listing(missing_sources)}")
    foreign = [t for t in keymap.rules if t not in target_shapes]
    if foreign:
        raise ValueError(f"{c}: mapped key(s) that the diffusers model does not have: {key_listing(foreign)}")
    missing = [t for t in target_shapes if t not in keymap.rules]
    if missing:
        raise ValueError(f"{c}: diffusers model key(s) left unfilled by the checkpoint: {key_listing(missing)}")
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


def build_loaded(model_factory: Callable[[], torch.nn.Module], keymap: KeyMap,
                  sd: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """Build the model on ``meta``, validate the mapping against it, then assign the converted tensors."""
    with torch.device("meta"):
        model = model_factory()
    target_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    validate_mapping(keymap, shapes_of(sd), target_shapes)
    state = {}
    for target, (source, transform) in keymap.rules.items():
        tensor = sd[source]
        if transform is not None:
            tensor = transform(tensor)
        state[target] = tensor.detach().clone(memory_format=torch.contiguous_format)
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise ValueError(f"{keymap.component}: tensors not initialised by the checkpoint: {key_listing(leftover)}")
    return model.eval()


def check_mapping(factory: Callable[[], torch.nn.Module], keymap: KeyMap,
                   source_shapes: Mapping[str, Shape]) -> dict[str, str]:
    with torch.device("meta"):
        model = factory()
    validate_mapping(keymap, source_shapes, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    return {t: s for t, (s, _) in keymap.rules.items()}


def detect_prefix(keys: Sequence[str], prefixes: Sequence[str], anchor: str) -> str:
    for prefix in prefixes:
        if prefix + anchor in keys:
            return prefix
    if anchor in keys:
        return ""
    raise ValueError(f"not a recognised checkpoint: no {anchor!r} key (with or without prefix "
                     f"{', '.join(repr(p) for p in prefixes)})")
