"""LeafSegPipeline: image -> mask with the trained LEAF networks (diffusers style).

Default inference is LEAF's single reverse step: z_T ~ N(0, I) from a fixed seed, t = 999, x0_hat taken from the
UNet output under its parameterisation (DDIM's ``pred_original_sample``, clamped to [-1, 1] when the scheduler's
``clip_sample`` is on, as in the authors' code),
mask = mean over channels of (clamp(D(x0_hat / s), -1, 1) + 1) / 2 > 0.5.
``num_inference_steps > 1`` runs DDIM (eta 0) instead; ``ensemble_size > 1`` averages the soft masks of several
seeds into a probability map and reports their per-pixel standard deviation as an uncertainty map.

The pipeline holds exactly the inference networks: mask autoencoder, image encoder and UNet (plus the scheduler
config). The projector and the teacher are training-only and never saved here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel
from diffusers.utils import BaseOutput
from PIL import Image

from .diffusion import single_step_x0
from .models import autoencoder as ae_ops
from .models.image_encoder import ImageEncoder


@dataclass
class LeafSegPipelineOutput(BaseOutput):
    """Per input image, at the input's own size:

    masks: bool arrays (H, W); probabilities: float32 arrays in [0, 1] (the soft mask, ensemble mean);
    uncertainty: float32 per-pixel std over the ensemble (None when ``ensemble_size == 1``);
    processing_masks: bool arrays (R, R), the masks at the processing resolution before resizing back (what the
    paper's numbers are computed on).
    """

    masks: list[np.ndarray]
    probabilities: list[np.ndarray]
    uncertainty: list[np.ndarray] | None
    processing_masks: list[np.ndarray] | None = None


def to_image_tensor(image) -> torch.Tensor:
    """PIL image / HxW(x3) uint8 or float array / (3, H, W) tensor in [0, 1] -> float (3, H, W) in [0, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise ValueError(f"expected an (H, W, 3) image array, got shape {image.shape}")
        tensor = torch.from_numpy(np.array(image[..., :3])).permute(2, 0, 1)  # a writable copy
        return tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) image tensor in [0, 1], got shape {tuple(image.shape)}")
        return image.float()
    raise TypeError(f"unsupported image type {type(image).__name__}")


def preprocess_images(images, resolution: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Images of any size -> (B, 3, R, R) in [-1, 1] at the processing resolution, plus the original sizes."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        images = list(images)
    elif not isinstance(images, (list, tuple)):
        images = [images]
    tensors = [to_image_tensor(im) for im in images]
    sizes = [tuple(t.shape[-2:]) for t in tensors]
    r = resolution
    batch = torch.stack([
        F.interpolate(t[None], size=(r, r), mode="bilinear", align_corners=False, antialias=True)[0]
        if tuple(t.shape[-2:]) != (r, r) else t for t in tensors
    ])
    return batch.clamp(0, 1) * 2 - 1, sizes


def to_output(prob: torch.Tensor, std: torch.Tensor | None, sizes: list[tuple[int, int]], threshold: float
              ) -> LeafSegPipelineOutput:
    """(B, R, R) probabilities (and ensemble std) -> per-image arrays at each input's own size."""
    prob = prob.float().cpu()
    masks, probabilities, uncertainty = [], [], []
    for i, (hh, ww) in enumerate(sizes):
        p = F.interpolate(prob[i][None, None], size=(hh, ww), mode="bilinear", align_corners=False)[0, 0]
        masks.append((p > threshold).numpy())
        probabilities.append(p.numpy().astype(np.float32))
        if std is not None:
            s = F.interpolate(std[i].float().cpu()[None, None], size=(hh, ww), mode="bilinear",
                              align_corners=False)[0, 0]
            uncertainty.append(s.numpy().astype(np.float32))
    return LeafSegPipelineOutput(masks=masks, probabilities=probabilities,
                                 uncertainty=uncertainty if std is not None else None,
                                 processing_masks=list((prob > threshold).numpy()))


class LeafSegPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "image_encoder->unet->autoencoder"

    def __init__(self, autoencoder, image_encoder: ImageEncoder, unet: UNet2DModel, scheduler: DDIMScheduler):
        super().__init__()
        self.register_modules(autoencoder=autoencoder, image_encoder=image_encoder, unet=unet, scheduler=scheduler)

    @property
    def resolution(self) -> int:
        """Processing resolution: the UNet's latent size times the autoencoder's downscale factor."""
        return int(self.unet.config.sample_size) * ae_ops.downscale_factor(self.autoencoder)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    def preprocess(self, images) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        return preprocess_images(images, self.resolution)

    def _noise(self, shape, seed: int, generator, device, dtype) -> torch.Tensor:
        # One noise draw per ensemble member, shared by every image in the batch, so an image's result does not
        # depend on what else is in the batch.
        if generator is None:
            generator = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32).to(device, dtype)

    @torch.no_grad()
    def latents_to_soft_masks(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> soft masks (B, R, R) in [0, 1] (mean over the decoded RGB channels)."""
        decoded = ae_ops.decode(self.autoencoder, latents / ae_ops.latent_scale(self.autoencoder))
        return ((decoded.float() + 1) / 2).mean(dim=1)

    @torch.no_grad()
    def predict_latents(self, images: torch.Tensor, num_inference_steps: int = 1, ensemble_size: int = 1,
                        seed: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, R, R) images in [-1, 1] -> predicted clean latents (E, B, C, h, w), scaled."""
        device, dtype = self.unet.device, self.unet.dtype
        scale = ae_ops.latent_scale(self.autoencoder)
        zx = self.image_encoder(images.to(device, self.image_encoder.dtype)).to(dtype) * scale
        b, c, h, w = zx.shape
        noise = torch.stack([self._noise((c, h, w), seed + k, generator, device, dtype) for k in range(ensemble_size)])
        z = noise[:, None].expand(ensemble_size, b, c, h, w).reshape(ensemble_size * b, c, h, w)
        cond = zx.repeat(ensemble_size, 1, 1, 1)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if num_inference_steps == 1:
            # LEAF's single reverse step: the UNet at t = T - 1, x0_hat = DDIM's pred_original_sample (clamped to
            # +-clip_sample_range when the scheduler clips), whatever the timestep spacing would place first.
            t = self.scheduler.config.num_train_timesteps - 1
            out = self.unet(torch.cat([cond, z], dim=1), t).sample
            z = single_step_x0(self.scheduler, out, z, t)
        else:
            for t in self.progress_bar(self.scheduler.timesteps):
                out = self.unet(torch.cat([cond, z], dim=1), t).sample
                z = self.scheduler.step(out, t, z, eta=0.0).prev_sample
        return z.view(ensemble_size, b, c, h, w)

    @torch.no_grad()
    def __call__(self, image, num_inference_steps: int = 1, ensemble_size: int = 1, seed: int = 0,
                 generator: torch.Generator | None = None, threshold: float = 0.5, batch_size: int = 8,
                 return_dict: bool = True):
        """Segment one image or a list of images (PIL, numpy HxWx3, or (3, H, W) / (B, 3, H, W) tensors in [0, 1]).

        Returns a :class:`LeafSegPipelineOutput` with masks, probabilities and (for ensembles) uncertainty at each
        input's own size.
        """
        if num_inference_steps < 1 or ensemble_size < 1:
            raise ValueError("num_inference_steps and ensemble_size must be >= 1")
        images, sizes = self.preprocess(image)
        probs, stds = [], []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            latents = self.predict_latents(chunk, num_inference_steps, ensemble_size, seed, generator)
            e, b = latents.shape[:2]
            soft = self.latents_to_soft_masks(latents.flatten(0, 1))
            soft = soft.view(e, b, *soft.shape[-2:])
            probs.append(soft.mean(0))
            stds.append(soft.std(0, unbiased=False))
        output = to_output(torch.cat(probs), torch.cat(stds) if ensemble_size > 1 else None, sizes, threshold)
        return output if return_dict else (output.masks, output.probabilities, output.uncertainty)
