"""Colour augmentation of training images (``data.colour_jitter``; leafseg option, off by default and in paper.yaml).

The paper augments with flips only. Images from other hospitals differ in light, white balance and processor
colour; a colour jitter of the training images is the usual remedy, and it costs nothing here: masks, and so the
cached mask latents, do not change with colour. kornia's ``ColorJitter`` does the work (torchvision's semantics:
brightness, contrast and saturation factors drawn from [1 - x, 1 + x], hue shifts from [-x, x] of the colour
circle, applied in a random order); leafseg only seeds it from the training step's generator, so a run is
deterministic and resumes exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used, so that reading files (and the CLI's start-up) does not
    import torch

KEYS = ("brightness", "contrast", "saturation", "hue")


class ColourJitter:
    """(B, 3, H, W) uint8 images -> jittered uint8 images, one random draw per image; the identity (drawing nothing
    from the generator) when every strength is 0."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0):
        strengths = dict(zip(KEYS, (float(brightness), float(contrast), float(saturation), float(hue))))
        for key, value in strengths.items():
            if not 0 <= value <= (0.5 if key == "hue" else 1.0):
                raise ValueError(f"data.colour_jitter.{key} must be in [0, {0.5 if key == 'hue' else 1}], "
                                 f"got {value}")
        self.strengths = strengths
        self.transform = None
        if any(strengths.values()):
            try:
                from kornia.augmentation import ColorJitter
            except ImportError:
                raise ImportError("data.colour_jitter needs kornia: pip install 'leafseg[augment]'") from None
            self.transform = ColorJitter(**strengths, p=1.0)

    @classmethod
    def from_config(cls, section) -> "ColourJitter":
        return cls(**{k: section.get(k, 0.0) for k in KEYS}) if section else cls()

    @property
    def enabled(self) -> bool:
        return self.transform is not None

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.transform is None:
            return images
        import torch

        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"colour jitter takes (B, 3, H, W) uint8 images, got {tuple(images.shape)} "
                             f"{images.dtype}")
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):  # kornia draws from the global generator: seed it, leave it as it was
            torch.manual_seed(seed)
            out = self.transform(images.float() / 255)
        return (out.clamp(0, 1) * 255).round().to(torch.uint8)

    def __repr__(self) -> str:
        on = ", ".join(f"{k} {v:g}" for k, v in self.strengths.items() if v)
        return f"colour jitter ({on})" if on else "no colour jitter"
