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

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DModel

from ..diffusion import single_step_x0
from ..models import autoencoder as ae_ops
from ..data.labels import LabelTable
from ..models.class_latents import class_probabilities, split_groups
from ..models.image_encoder import ImageEncoder
from .flips import flipped_views, merge_views
from .frame_decision import FrameDecision, stored_decision
from .image_processor import SegmentationImageProcessor, SegmentationPipelineOutput


LeafSegPipelineOutput = SegmentationPipelineOutput  # the output of both segmentation pipelines


class LeafSegPipeline(DiffusionPipeline):
    """LEAF inference: the trainable image encoder maps the image to a latent condition, the UNet predicts the clean
    mask latent from noise and that condition in one reverse step (or DDIM steps), and the frozen mask autoencoder
    decodes it; ensembles average seeds. Load a saved one with :func:`leafseg.load_pipeline` or ``from_pretrained``;
    the folder holds only the inference networks (no projector, no teacher)."""

    model_cpu_offload_seq = "image_encoder->unet->autoencoder"
    #: what every leafseg pipeline states: multi-step DDIM (num_inference_steps > 1) and seed ensembles
    supports_multistep = True
    supports_ensembles = True

    def __init__(self, autoencoder, image_encoder: ImageEncoder, unet: UNet2DModel, scheduler: DDIMScheduler,
                 intensity: dict | None = None, slice_axis: int = 2, frame_decision: dict | None = None,
                 labels: dict | None = None):
        super().__init__()
        self.register_modules(autoencoder=autoencoder, image_encoder=image_encoder, unet=unet, scheduler=scheduler)
        # how NIfTI/DICOM volumes were turned into 8-bit slices in training: predict does the same; the calibrated
        # frame-level decision (leafseg calibrate), if any; the label table of a multi-class model ({name: value})
        FrameDecision.from_config(frame_decision)
        if labels is not None:  # K structures: the UNet predicts K latents (leafseg.models.class_latents)
            k, c = LabelTable.from_dict(labels, "labels").num_classes, ae_ops.latent_channels(autoencoder)
            if unet.config.out_channels != k * c:
                raise ValueError(f"labels name {k} structures but the UNet predicts {unet.config.out_channels} "
                                 f"channels, not {k} x {c}")
        self.register_to_config(intensity=intensity, slice_axis=slice_axis, frame_decision=frame_decision,
                                labels=labels)

    @property
    def label_table(self) -> LabelTable | None:
        """The structures of a multi-class model (None: one structure, binary masks)."""
        labels = self.config.get("labels")
        return LabelTable.from_dict(dict(labels), "labels") if labels else None

    @property
    def num_classes(self) -> int:
        table = self.label_table
        return 1 if table is None else table.num_classes

    @property
    def resolution(self) -> int:
        """Processing resolution: the UNet's latent size times the autoencoder's downscale factor."""
        return int(self.unet.config.sample_size) * ae_ops.downscale_factor(self.autoencoder)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def image_processor(self) -> SegmentationImageProcessor:
        return SegmentationImageProcessor(self.resolution)

    def _noise(self, shape, seed: int, generator, device, dtype) -> torch.Tensor:
        # One noise draw per ensemble member, shared by every image in the batch, so an image's result does not
        # depend on what else is in the batch.
        if generator is None:
            generator = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32).to(device, dtype)

    @torch.no_grad()
    def latents_to_soft_masks(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> soft masks (B, R, R) in [0, 1] (mean over the decoded RGB channels)."""
        ae_dtype = next(self.autoencoder.parameters()).dtype
        # unscaled in float32, then cast: a bf16 decoder (leafseg.pipelines.precision) gets one rounding, not two
        decoded = ae_ops.decode(self.autoencoder, (latents / ae_ops.latent_scale(self.autoencoder)).to(ae_dtype))
        return ((decoded.float() + 1) / 2).mean(dim=1)

    @torch.no_grad()
    def latents_to_class_masks(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents of K structures (B, K x C, h, w) -> their soft masks (B, K, R, R), each group decoded."""
        b = latents.shape[0]
        soft = self.latents_to_soft_masks(split_groups(latents, self.num_classes))
        return soft.view(b, self.num_classes, *soft.shape[-2:])

    @torch.no_grad()
    def latents_to_labels(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> (B, R, R) uint8 class indices 0..K (the most probable class of each pixel)."""
        return class_probabilities(self.latents_to_class_masks(latents)).argmax(1).to(torch.uint8)

    @torch.no_grad()
    def predict_latents(self, images: torch.Tensor, num_inference_steps: int = 1, ensemble_size: int = 1,
                        seed: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, R, R) images in [-1, 1] -> predicted clean latents (E, B, C, h, w), scaled."""
        # latents and the DDIM / x0 arithmetic in float32; the networks in their own dtype (bf16 when the pipeline
        # was set to it, leafseg.pipelines.precision)
        device, dtype, f32 = self.unet.device, self.unet.dtype, torch.float32
        scale = ae_ops.latent_scale(self.autoencoder)
        zx = self.image_encoder(images.to(device, self.image_encoder.dtype)).to(f32) * scale
        b, _, h, w = zx.shape
        c = int(self.unet.config.out_channels)  # the mask latent: C channels, K x C for K structures
        noise = torch.stack([self._noise((c, h, w), seed + k, generator, device, f32) for k in range(ensemble_size)])
        z = noise[:, None].expand(ensemble_size, b, c, h, w).reshape(ensemble_size * b, c, h, w)
        cond = zx.repeat(ensemble_size, 1, 1, 1)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if num_inference_steps == 1:
            # LEAF's single reverse step: the UNet at t = T - 1, x0_hat = DDIM's pred_original_sample (clamped to
            # +-clip_sample_range when the scheduler clips), whatever the timestep spacing would place first.
            t = self.scheduler.config.num_train_timesteps - 1
            out = self.unet(torch.cat([cond, z], dim=1).to(dtype), t).sample.to(f32)
            z = single_step_x0(self.scheduler, out, z, t)
        else:
            for t in self.progress_bar(self.scheduler.timesteps):
                out = self.unet(torch.cat([cond, z], dim=1).to(dtype), t).sample.to(f32)
                z = self.scheduler.step(out, t, z, eta=0.0).prev_sample
        return z.view(ensemble_size, b, c, h, w)

    @torch.no_grad()
    def __call__(self, image, num_inference_steps: int = 1, ensemble_size: int = 1, seed: int = 0,
                 generator: torch.Generator | None = None, threshold: float = 0.5, batch_size: int = 8,
                 flip_tta: bool = False, frame_decision: bool = True, return_dict: bool = True):
        """Segment one image or a list of images (PIL, numpy HxWx3, or (3, H, W) / (B, 3, H, W) tensors in [0, 1]).

        Args:
            image: one image or a list (PIL; numpy (H, W), (H, W, 3) or (H, W, 4), uint8 or float in [0, 1];
                torch (3, H, W) or (B, 3, H, W)); any size, resized to the model's resolution and back.
            num_inference_steps: 1 is LEAF's single step (x0 from t = 999); more runs DDIM.
            ensemble_size: seeds ``seed .. seed + ensemble_size - 1`` averaged into the probability; >= 2 also
                gives the per-pixel standard deviation.
            seed: the noise seed (one draw per member, shared by the batch: an image's result does not depend on
                its batch).
            generator: a torch generator instead of ``seed`` (single member).
            threshold: probability above which a pixel is foreground.
            batch_size: images per forward pass (each with its three flipped copies under ``flip_tta``).
            flip_tta: average each member's soft mask over the image and its horizontal, vertical and doubly
                flipped copies (:mod:`leafseg.pipelines.flips`; 4x the work).
            frame_decision: apply the model's calibrated "nothing here" decision, if it has one
                (:mod:`leafseg.pipelines.frame_decision`); False segments every frame as it comes.
            return_dict: False returns the tuple ``(masks, probabilities, uncertainty)``.

        Returns:
            A :class:`SegmentationPipelineOutput` with masks, probabilities and (for ensembles) uncertainty at each
            input's own size. A multi-class model (``label_table``) returns label maps of class indices and (K + 1)
            class probabilities, each pixel the most probable class: ``threshold`` and ``frame_decision`` are for
            one structure and do not apply.

        Raises:
            ValueError, TypeError: an input of another shape, range or type (the message says what is accepted).
        """
        if num_inference_steps < 1 or ensemble_size < 1:
            raise ValueError("num_inference_steps and ensemble_size must be >= 1")
        images, sizes = self.image_processor.preprocess(image)
        if self.num_classes > 1:
            return self._segment_classes(images, sizes, num_inference_steps, ensemble_size, seed, generator,
                                         batch_size, flip_tta, return_dict)
        probs, stds = [], []
        for soft in self._member_masks(images, batch_size, flip_tta, self.latents_to_soft_masks,
                                       num_inference_steps, ensemble_size, seed, generator):
            probs.append(soft.mean(0))
            stds.append(soft.std(0, unbiased=False))
        output = self.image_processor.postprocess(torch.cat(probs), torch.cat(stds) if ensemble_size > 1 else None,
                                                  sizes, threshold, stored_decision(self, frame_decision))
        return output if return_dict else (output.masks, output.probabilities, output.uncertainty)

    def _member_masks(self, images, batch_size, flip_tta, decode, *predict_args):
        """Per batch of ``images``: each ensemble member's soft masks (E, B, ...) by ``decode``, flipped views merged
        (:meth:`predict_latents` takes ``predict_args``)."""
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            if flip_tta:
                chunk = flipped_views(chunk)
            latents = self.predict_latents(chunk, *predict_args)
            e, b = latents.shape[:2]
            soft = decode(latents.flatten(0, 1))
            soft = soft.view(e, b, *soft.shape[1:])
            if flip_tta:  # merge_views wants the batch third from the end
                soft = merge_views(soft.movedim(1, -3)).movedim(-3, 1)
            yield soft

    def _segment_classes(self, images, sizes, num_inference_steps, ensemble_size, seed, generator, batch_size,
                         flip_tta, return_dict):
        """Several structures: per member each structure's soft mask, averaged over members (and flipped views),
        read as class probabilities (:func:`~leafseg.models.class_latents.class_probabilities`); the uncertainty is
        the members' per-pixel std of the soft masks, averaged over the structures."""
        if flip_tta:
            self.label_table.check_mirroring("flip_tta")
        probs, stds = [], []
        for soft in self._member_masks(images, batch_size, flip_tta, self.latents_to_class_masks,
                                       num_inference_steps, ensemble_size, seed, generator):
            probs.append(class_probabilities(soft.mean(0)))
            stds.append(soft.std(0, unbiased=False).mean(1))
        output = self.image_processor.postprocess_labels(torch.cat(probs),
                                                         torch.cat(stds) if ensemble_size > 1 else None, sizes)
        return output if return_dict else (output.masks, output.probabilities, output.uncertainty)
