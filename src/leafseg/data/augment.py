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

if TYPE_CHECKING:  # torch (and numpy) are imported where they are used, so that the CLI's start-up does not
    import numpy as np
    import torch

KEYS = ("brightness", "contrast", "saturation", "hue")


class ColourJitter:
    """(B, 3, H, W) uint8 images -> jittered uint8 images, one random draw per image; the identity (drawing nothing
    from the generator) when every strength is 0."""

    def __init__(self, **strengths: float):
        """``strengths``: keys of ``data.colour_jitter``; the others take default.yaml's values (0: off), and the
        configuration's schema checks them all."""
        from ..config import section_config

        section = section_config("data.colour_jitter", strengths)
        strengths = {key: float(section[key]) for key in KEYS}
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
        return cls(**section) if section else cls()

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


class SampleAugmentation:
    """nnU-Net-style augmentation of training samples (``data.augment``; leafseg option, off by default and in
    paper.yaml), by kornia on whole batches: geometric transforms applied identically to images and masks (zoom into
    a random window keeping ``crop_scale`` of the area, rotation, elastic deformation; kornia's affine transforms,
    which keep the size), then intensity transforms on the image only (gamma, Gaussian blur, Gaussian noise). Each
    enabled transform fires with probability ``p`` per sample.

    Returns the image after the geometric transforms (``view``: what the alignment teacher sees, as with colour
    jitter), the image after all of them, the mask (thresholded at 0.5 after a bilinear warp), and which samples a
    geometric transform or a negative crop changed: their mask latents and teacher tokens are computed on the fly,
    the others' read from the flip cache.

    Negatives (``negative``: the fraction of samples, drawn before the other transforms), with the empty mask:
    frames without the object, which datasets of positive frames lack. ``negative_mode`` says how they are made:
    ``crop``, a square crop of the image that holds no foreground, resized to the full size (it lies beside the
    object's bounding box, in the widest free band, and is at least ``negative_min`` of the side; a sample without
    such room is left as it is); ``inpaint``, the whole frame with the object painted out (:func:`inpainted_negatives`:
    the mask dilated by ``negative_dilate`` of the side, filled by OpenCV's Telea inpainting), so the folds, lumen,
    light and scope borders of a full frame are there at their real scale and the model sees the frame it will meet.
    """

    def __init__(self, **settings):
        """``settings``: keys of ``data.augment``; the others take default.yaml's values (off), and the
        configuration's schema checks them all (:func:`leafseg.config.section_config`)."""
        from ..config import section_config

        section = section_config("data.augment", settings)
        p, rotate, elastic, blur, noise, negative, negative_min, negative_dilate = (
            float(section[k]) for k in ("p", "rotate", "elastic", "blur", "noise", "negative", "negative_min",
                                        "negative_dilate"))
        crop_scale, gamma = (tuple(float(v) for v in section[k]) for k in ("crop_scale", "gamma"))
        negative_mode = str(section.negative_mode)
        values = {"p": p, "crop_scale": crop_scale, "rotate": rotate, "elastic": elastic,
                  "gamma": gamma, "blur": blur, "noise": noise, "negative": negative, "negative_min": negative_min,
                  "negative_mode": negative_mode, "negative_dilate": negative_dilate}
        self.settings = values
        self.p = float(p)
        self.negative, self.negative_min = float(negative), float(negative_min)
        self.negative_mode, self.negative_dilate = str(negative_mode), float(negative_dilate)
        if self.negative > 0 and self.negative_mode == "inpaint":
            _cv2()  # refused now, not at the first batch
        self.has_geometric = (p > 0 and (crop_scale != (1.0, 1.0) or rotate > 0 or elastic > 0)) or negative > 0
        self.has_intensity = p > 0 and (gamma != (1.0, 1.0) or blur > 0 or noise > 0)
        self.intensity, self._geo_spec = None, []
        if self.has_geometric or self.has_intensity:
            try:
                import kornia.augmentation as K
            except ImportError:
                raise ImportError("data.augment needs kornia: pip install 'leafseg[augment]'") from None
            geo = []
            if crop_scale != (1.0, 1.0) and p:
                geo.append(("zoom", crop_scale))
            if rotate > 0 and p:
                geo.append(("rotate", rotate))
            if elastic > 0 and p:
                geo.append(("elastic", elastic))
            self._geo_spec = geo
            inten = []
            if gamma != (1.0, 1.0):
                inten.append(K.RandomGamma(gamma=gamma, p=p))
            if blur > 0:
                inten.append(K.RandomGaussianBlur((5, 5), (0.1, blur), p=p))
            if noise > 0:
                inten.append(K.RandomGaussianNoise(std=noise, p=p))
            self.intensity = K.AugmentationSequential(*inten) if inten else None

    def _geometric(self, size: int):
        import kornia.augmentation as K

        parts = []
        for spec in self._geo_spec:
            if spec[0] == "zoom":  # a window of area fraction a is a zoom by 1/sqrt(a), kept inside the image
                lo, hi = spec[1]
                shift = (1 - lo ** 0.5) / 2
                parts.append(K.RandomAffine(0.0, translate=(shift, shift), scale=(hi ** -0.5, lo ** -0.5), p=self.p))
            elif spec[0] == "rotate":
                parts.append(K.RandomAffine(spec[1], p=self.p))
            else:  # kornia's default sigma (32 px) at 128 px; alpha is the displacement scale
                parts.append(K.RandomElasticTransform(alpha=(spec[1], spec[1]), p=self.p, align_corners=False))
        return K.AugmentationSequential(*parts, data_keys=["input", "mask"])

    @classmethod
    def from_config(cls, section) -> "SampleAugmentation":
        return cls(**section) if section else cls()

    @property
    def enabled(self) -> bool:
        return self.has_geometric or self.has_intensity

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, R, R) uint8 images, (B, R, R) bool masks -> (view, image, mask, changed) as described above; the
        same ``seed`` gives the same result. Off: the inputs themselves, nothing changed."""
        import torch

        changed = torch.zeros(len(images), dtype=torch.bool)
        if not self.enabled:
            return images, images, masks, changed

        size = images.shape[-1]
        if self._geo_spec and getattr(self, "_geo_size", None) != size:  # built once, before any draw
            self._geo, self._geo_size = self._geometric(size), size
        with torch.random.fork_rng(devices=[]):  # kornia draws from the global generator: seed it, leave it as it was
            torch.manual_seed(int(seed))
            if self.negative > 0 and self.negative_mode == "inpaint":
                images, masks, changed = inpainted_negatives(images, masks, self.negative, self.negative_dilate,
                                                             torch.Generator().manual_seed(int(seed)))
            elif self.negative > 0:
                images, masks, changed = negative_crops(images, masks, self.negative, self.negative_min,
                                                        torch.Generator().manual_seed(int(seed)))
            x = images.float() / 255
            if self._geo_spec:
                if masks.max() > 1:  # a label map: each structure warped as a soft map, each pixel the largest
                    onehot = torch.stack([masks == k for k in range(1, int(masks.max()) + 1)], 1).float()
                    x, m = self._geo(x, onehot)
                    masks = torch.cat([1 - m.sum(1, keepdim=True), m], 1).argmax(1).to(torch.uint8)
                else:
                    x, m = self._geo(x, masks[:, None].float())
                    masks = m[:, 0] > 0.5
                for params in self._geo._params:  # which samples each transform touched
                    changed |= params.data["batch_prob"].cpu() > 0.5
                view = (x.clamp(0, 1) * 255).round().to(torch.uint8)
            else:
                view = images
            if self.intensity is not None:
                x = self.intensity(x)
                out = (x.clamp(0, 1) * 255).round().to(torch.uint8)
            else:
                out = view
        return view, out, masks, changed

    def __repr__(self) -> str:
        if not self.enabled:
            return "no augmentation"
        s = self.settings
        parts = [f"zoom to {s['crop_scale'][0]:g}-{s['crop_scale'][1]:g} of the area" if s["crop_scale"] != (1.0, 1.0)
                 else "",
                 f"rotation +-{s['rotate']:g} deg" if s["rotate"] else "",
                 f"elastic {s['elastic']:g}" if s["elastic"] else "",
                 f"gamma {s['gamma'][0]:g}-{s['gamma'][1]:g}" if s["gamma"] != (1.0, 1.0) else "",
                 f"blur sigma <= {s['blur']:g}" if s["blur"] else "", f"noise std {s['noise']:g}" if s["noise"] else "",
                 (f"negative {'crops' if s['negative_mode'] == 'crop' else 'inpainted frames'} {s['negative']:g}"
                  if s["negative"] else "")]
        return f"augmentation p={s['p']:g} ({', '.join(p for p in parts if p)})"


def free_band(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the band beside a 2-D mask's foreground bounding box (above, below, left or
    right of it) that holds the largest square; the whole frame when the mask is empty."""
    import numpy as np

    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return 0, 0, h, w
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    bands = [(0, 0, y0, w), (y1, 0, h, w), (0, 0, h, x0), (0, x1, h, w)]
    return max(bands, key=lambda b: min(b[2] - b[0], b[3] - b[1]))


def negative_crops(images: torch.Tensor, masks: torch.Tensor, fraction: float, min_side: float,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace about ``fraction`` of the samples by a crop without foreground, resized back to (R, R), and an empty
    mask (see :class:`SampleAugmentation`). Inputs: (B, 3, R, R) uint8, (B, R, R) bool; also returns which samples
    were replaced."""
    import torch
    import torch.nn.functional as F

    size = images.shape[-1]
    chosen = torch.rand(len(images), generator=generator) < fraction
    pick = torch.rand(len(images), 2, generator=generator)  # where along the band the crop sits
    images, masks = images.clone(), masks.clone()
    replaced = torch.zeros(len(images), dtype=torch.bool)
    for i in torch.nonzero(chosen).flatten().tolist():
        top, left, bottom, right = free_band(masks[i].numpy())
        side = min(bottom - top, right - left)
        if side < max(2, round(min_side * size)):
            continue
        y = top + int(pick[i, 0] * (bottom - top - side + 1))
        x = left + int(pick[i, 1] * (right - left - side + 1))
        crop = images[i:i + 1, :, y:y + side, x:x + side].float()
        images[i] = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                                  antialias=side > size)[0].round().clamp(0, 255).to(torch.uint8)
        masks[i] = False
        replaced[i] = True
    return images, masks, replaced


#: an object covering more of the frame than this (after dilation) is not painted out: too little is left to paint from
INPAINT_MAX_AREA = 0.4


def _cv2():
    try:
        import cv2
    except ImportError:
        raise ImportError("data.augment.negative_mode=inpaint needs OpenCV: pip install 'leafseg[augment]'") from None
    return cv2


def inpaint_object(image: np.ndarray, mask: np.ndarray, dilate: float = 0.03) -> np.ndarray | None:
    """(H, W, 3) uint8 image, (H, W) bool mask -> the image with the object painted out (OpenCV's Telea inpainting of
    the mask dilated by ``dilate`` of the shorter side, at least one pixel, so the object's rim goes too; radius
    about 2% of the side). None when the dilated mask covers more than ``INPAINT_MAX_AREA`` of the frame; an empty
    mask returns the image itself."""
    import numpy as np

    if not mask.any():
        return image
    cv2 = _cv2()
    side = min(mask.shape)
    r = max(1, round(dilate * side))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    hole = cv2.dilate(mask.astype(np.uint8), kernel)
    if hole.mean() > INPAINT_MAX_AREA:
        return None
    return cv2.inpaint(np.ascontiguousarray(image), hole, max(3, round(0.02 * side)), cv2.INPAINT_TELEA)


def inpainted_negatives(images: torch.Tensor, masks: torch.Tensor, fraction: float, dilate: float,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace about ``fraction`` of the samples by the same frame with its object painted out
    (:func:`inpaint_object`) and an empty mask. Inputs: (B, 3, R, R) uint8, (B, R, R) bool; also returns which
    samples were replaced (a sample whose object is too large to paint out stays as it is)."""
    import torch

    chosen = torch.rand(len(images), generator=generator) < fraction
    images, masks = images.clone(), masks.clone()
    replaced = torch.zeros(len(images), dtype=torch.bool)
    for i in torch.nonzero(chosen).flatten().tolist():
        if not masks[i].any():
            continue  # already a frame without the object
        filled = inpaint_object(images[i].permute(1, 2, 0).numpy(), masks[i].numpy(), dilate)
        if filled is None:
            continue
        images[i] = torch.from_numpy(filled).permute(2, 0, 1)
        masks[i] = False
        replaced[i] = True
    return images, masks, replaced


