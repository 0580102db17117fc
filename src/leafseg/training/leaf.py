"""The LEAF training method (one step, LEAF.md "Training step" as the README restates it):

z^x = E_theta(image) * s; z0 = E(mask) * s (frozen, cached); t ~ U{0..T-1}; z_t = sqrt(abar) z0 + sqrt(1 - abar) eps;
pred, h = f_theta([z^x, z_t], t); loss = L1(pred, target) + lambda * mean(-cos(phi(h), teacher tokens)).

Frozen, deterministic quantities (mask latents and teacher tokens, per training image and flip) are computed once
and cached on disk (``leafseg.training.caches``), unless geometric augmentation changes them with every batch; the
engine (``leafseg.training.engine``) does the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from omegaconf import DictConfig

from .. import data as D
from ..config import to_container
from ..diffusion import add_noise, make_scheduler, training_target
from ..metrics import dice as dice_score, mean_class_dice
from ..models import autoencoder as ae_ops
from ..models.alignment import Projector, alignment_loss, feature_map_to_tokens
from ..models.class_latents import class_masks
from ..models.denoiser import (DownBlockFeatures, build_unet, down_block_grids, load_pretrained_unet,
                               set_unet_dropout)
from ..models.image_encoder import ImageEncoder
from ..models.teachers import TEACHERS, build_teacher, features_to_tokens
from ..pipelines.compilation import compile_for_training
from ..pipelines.leaf import LeafSegPipeline
from ..data.loader import TrainBatch
from .caches import (MaskLatents, TeacherFeatures, cache_backend, cache_rows, cached, flipped_inputs,
                     frozen_function, mirror_tokens, target_cache_key)
from .engine import RunContext
from .run_data import volume_config
from .run_log import say


def autoencoder_path(ac: DictConfig) -> Path | None:
    """The mask autoencoder's folder (:func:`~leafseg.models.autoencoder.autoencoder_folder`), saying which."""
    path = ae_ops.autoencoder_folder(ac.kind, ac.path)
    if path is not None:
        say(f"autoencoder: {ac.kind} from {path}")
    return path


def build_components(cfg: DictConfig, num_classes: int = 1) -> dict:
    """Autoencoder (frozen), image encoder (copy of its encoder), UNet (2C in; for K structures C + K x C in, K x C
    out), scheduler."""
    ac = cfg.autoencoder
    ae = ae_ops.load_autoencoder(ac.kind, autoencoder_path(ac), to_container(ac)["config"], ac.scaling_factor)
    factor = ae_ops.downscale_factor(ae)
    if cfg.data.resolution % factor:
        raise ValueError(f"data.resolution {cfg.data.resolution} must be a multiple of the autoencoder's {factor}")
    latent_size = cfg.data.resolution // factor
    channels = ae_ops.latent_channels(ae)
    ic = cfg.image_encoder
    image_encoder = ImageEncoder.from_autoencoder(ae, dropout=ic.dropout, dropout_sampler=str(ic.dropout_sampler),
                                                  condition=str(ic.condition), semantic_size=int(ic.semantic_size),
                                                  semantic_hidden=int(ic.semantic_hidden))
    image_encoder.freeze_leading_layers(cfg.image_encoder.frozen_layers)
    uc = to_container(cfg.unet)
    pretrained = uc.pop("pretrained")
    if pretrained:
        if num_classes > 1:
            raise ValueError("unet.pretrained: a pretrained LDM UNet predicts one mask latent; train a multi-class "
                             "model from a fresh UNet (unet.pretrained=null)")
        unet = set_unet_dropout(load_pretrained_unet(pretrained, channels, sample_size=latent_size), uc["dropout"])
    else:
        unet = build_unet(channels, latent_size, mask_groups=num_classes, **uc)
    scheduler = make_scheduler(**to_container(cfg.diffusion))
    return {"autoencoder": ae, "image_encoder": image_encoder, "unet": unet, "scheduler": scheduler}


def build_alignment_teacher(ac: DictConfig, device="cpu"):
    """The frozen teacher of config section ``align`` on ``device``, in ``align.teacher_dtype``."""
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if ac.teacher_dtype not in dtypes:
        raise ValueError(f"align.teacher_dtype must be float32 or bfloat16, got {ac.teacher_dtype!r}")
    teacher = build_teacher(ac.teacher, checkpoint=ac.teacher_checkpoint, layer=ac.teacher_layer,
                            image_size=ac.teacher_image_size, antialias=bool(ac.teacher_antialias))
    return teacher.to(device, dtypes[ac.teacher_dtype])


class LeafTrainingModel(torch.nn.Module):
    """The trainable networks in one module (one DDP wrapper), returning the loss terms."""

    def __init__(self, image_encoder: ImageEncoder, unet: UNet2DModel, projector: Projector | None, scheduler,
                 cfg: DictConfig, latent_scale: float):
        super().__init__()
        self.image_encoder, self.unet, self.projector = image_encoder, unet, projector
        self.scheduler = scheduler
        self.prediction_type = cfg.diffusion.prediction_type
        self.loss_kind = cfg.loss.kind
        self.align_layer = int(cfg.align.layer)
        self.align_weight = float(cfg.align.weight)
        self.quirk = bool(cfg.align.reference_batch_quirk)
        self.latent_scale = latent_scale
        if self.loss_kind not in ("l1", "l2"):
            raise ValueError(f"loss.kind must be l1 or l2, got {self.loss_kind!r}")

    def forward(self, images: torch.Tensor, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                teacher_tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss terms of a batch (the alignment term when the projector and teacher tokens are there)."""
        zx = self.image_encoder(images) * self.latent_scale
        z_t = add_noise(self.scheduler, z0, noise, t)
        with DownBlockFeatures(self.unet, self.align_layer) as features:
            pred = self.unet(torch.cat([zx, z_t.to(zx.dtype)], dim=1), t).sample
        target = training_target(self.prediction_type, self.scheduler, z0, noise, t)
        loss_fn = F.l1_loss if self.loss_kind == "l1" else F.mse_loss
        loss_main = loss_fn(pred.float(), target.float())
        out = {"loss_main": loss_main, "loss": loss_main}
        if self.projector is not None and teacher_tokens is not None:
            projected = self.projector(feature_map_to_tokens(features.value))
            loss_align = alignment_loss(projected, teacher_tokens, self.quirk)
            out["loss_align"] = loss_align
            out["loss"] = loss_main + self.align_weight * loss_align
        return out


class LeafMethod:
    """LEAF under the training engine: image encoder + UNet (+ projector) trained, EMA on the UNet, the pipeline
    exported without projector or teacher."""

    tracker_name = "leafseg"
    description = "training"

    def __init__(self, cfg: DictConfig):
        # refused here, before minutes of decoding and caching (the schema leaves the name open for plug-ins)
        if cfg.align.enabled and cfg.align.teacher not in TEACHERS:
            raise ValueError(f"align.teacher: unknown teacher {cfg.align.teacher!r}; available: {sorted(TEACHERS)}")
        self.cfg = cfg

    def build(self, run: RunContext) -> torch.nn.Module:
        cfg, ac, device = self.cfg, self.cfg.align, run.device
        self.run = run
        self.components = build_components(cfg, run.data.num_classes)
        self.autoencoder = self.components["autoencoder"].to(device)
        scale = ae_ops.latent_scale(self.autoencoder)
        unet: UNet2DModel = self.components["unet"]
        self.grid = down_block_grids(unet, int(unet.config.sample_size))[int(ac.layer)]
        self.teacher = projector = None
        if ac.enabled:
            self.teacher = build_alignment_teacher(ac, device)
            channels = unet.down_blocks[int(ac.layer)].resnets[-1].out_channels
            projector = Projector(channels, self.teacher.feature_dim, int(ac.projector_dim))
        model = LeafTrainingModel(self.components["image_encoder"], unet, projector, self.components["scheduler"],
                                  cfg, scale)
        self._build_caches(scale)
        return model

    def _build_caches(self, scale: float) -> None:
        """Mask latents and (with alignment) teacher tokens, per training sample and flip code, streamed from the
        sample store into row files. A sample that geometric augmentation changed gets both computed on the fly
        instead (:meth:`losses`), by the same backend (``run.cache_backend``) as the cache."""
        cfg, ac, run = self.cfg, self.cfg.align, self.run
        store, codes, device = run.data.train, run.codes, run.device
        self.mask_latents = MaskLatents(self.autoencoder, scale, self.num_classes)
        self.z0_cache = self.tokens_cache = None
        self.backend = cache_backend(str(cfg.run.cache_backend), device,
                                     say=None if run.accelerator.is_main_process else lambda _: None)  # once
        # ONNX Runtime for a float32 teacher only (paper.yaml's bf16 teacher stays with torch)
        self.teacher_backend = self.backend if ac.teacher_dtype == "float32" else "torch"
        self.example = torch.zeros(1, 3, store.resolution, store.resolution)  # the teacher's input
        self.mask_example = torch.zeros(1, 3 * self.num_classes, store.resolution, store.resolution)
        self._functions = {}
        if cfg.run.frozen_targets == "on_the_fly" or run.augmentation.has_geometric:
            for name in ("latents", "teacher") if self.teacher is not None else ("latents",):
                self._frozen(name)  # used per batch: exported now, in the start-up's time, not in step 1's
        if cfg.run.frozen_targets == "on_the_fly":
            return
        # Everything the cached tensors depend on, so runs can share a cache folder (run.cache_dir) safely.
        key = target_cache_key(store.folder.name, codes, int(cfg.data.resolution), to_container(cfg.autoencoder),
                               scale, backend=self.backend, device=device)
        cache_dir = run.cache_dir

        def read_masks(a: int, b: int) -> torch.Tensor:
            masks = torch.from_numpy(store.masks.read_range(a, b))
            if self.num_classes > 1:  # each structure's mask apart (leafseg.models.class_latents)
                return (class_masks(masks, self.num_classes) * 255).to(torch.uint8)
            return masks[:, None].expand(-1, 3, -1, -1) * 255

        def read_images(a: int, b: int) -> torch.Tensor:
            return torch.from_numpy(store.images.read_range(a, b))

        def build_latents(write):
            cache_rows(flipped_inputs(self.frozen_mask_latents, codes, device), read_masks, len(store), 16,
                       "mask latents", len(codes), write)

        self.z0_cache = cached(cache_dir / f"mask-latents-{key}", run.accelerator, build_latents, np.float32)
        teacher, grid = self.teacher, self.grid
        if teacher is None or not ac.cache:
            return

        def build_tokens(write):
            def tokens(x):
                return self.frozen_teacher_tokens(x).half()

            if ac.flip_tokens == "recompute":
                rows, passes = flipped_inputs(tokens, codes, device), len(codes)
            else:
                plain = flipped_inputs(tokens, [(False, False)], device)
                passes = 1

                def rows(x):
                    p = plain(x)[:, 0]
                    return torch.stack([mirror_tokens(p, grid, h, v) for h, v in codes], dim=1)

            cache_rows(rows, read_images, len(store), 8, "teacher tokens", passes, write)

        tkey = target_cache_key(key, teacher.name, grid, ac.flip_tokens, str(ac.teacher_dtype),
                                backend=self.teacher_backend, device=device)
        self.tokens_cache = cached(cache_dir / f"teacher-{tkey}", run.accelerator, build_tokens, np.float16)

    def _frozen(self, name: str):
        """The frozen function ``name`` ("latents": the mask autoencoder's, "teacher": the teacher's features) run
        by ``run.cache_backend``, exported on first use: the cache and the per-batch targets of augmented samples
        come from this one function (ONNX Runtime: 1.5x faster than eager torch on 2 Zen 4 cores)."""
        if name not in self._functions:
            module, backend, example = ((self.mask_latents, self.backend, self.mask_example) if name == "latents" else
                                        (TeacherFeatures(self.teacher), self.teacher_backend, self.example))
            self._functions[name] = frozen_function(module, example, backend)
        return self._functions[name]

    def frozen_mask_latents(self, masks: torch.Tensor) -> torch.Tensor:
        """Masks in [0, 1] (B, 3, H, W), or (B, 3K, H, W) for K structures -> scaled mask latents, as cached."""
        return self._frozen("latents")(masks)

    def frozen_teacher_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> float32 teacher tokens on the alignment grid, as cached (before the fp16 storage)."""
        return features_to_tokens(self._frozen("teacher")(images), self.grid)

    def ema_module(self, model: LeafTrainingModel) -> torch.nn.Module:
        return model.unet

    def compile_networks(self, model: LeafTrainingModel) -> int:
        """The image encoder whole, the UNet block by block (the alignment hook stays outside compiled graphs)."""
        return compile_for_training(model.image_encoder, model.unet)

    def row_files(self) -> tuple:
        """The cached frozen targets the data loader reads with each batch (None: computed per batch)."""
        return self.z0_cache, self.tokens_cache

    def _teacher(self, views: torch.Tensor) -> torch.Tensor:
        """What the teacher makes of (B, 3, R, R) uint8 views: float32 tokens on the alignment grid."""
        x = views.to(self.run.device).float().div_(255).contiguous(memory_format=torch.channels_last)
        return self.frozen_teacher_tokens(x).to(self.run.device)

    def _unchanged_tokens(self, views: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Tokens of views no geometric augmentation changed, without a cache: per flipped view, or (mirror) the
        teacher sees the unflipped image (flips undo themselves) and its token grid is flipped."""
        if self.cfg.align.flip_tokens == "recompute":
            return self._teacher(views)
        flips = self.run.codes
        plain = self._teacher(torch.stack([D.flip(x, *flips[c]) for x, c in zip(views, codes.tolist())]))
        return torch.stack([mirror_tokens(p[None], self.grid, *flips[c])[0] for p, c in zip(plain, codes.tolist())])

    @torch.no_grad()
    def _teacher_tokens(self, batch: TrainBatch) -> torch.Tensor | None:
        """The batch's alignment targets: cached rows, and the teacher's tokens of the views augmentation changed."""
        if self.teacher is None:
            return None
        changed, device = batch.changed, self.run.device
        if batch.tokens is not None:
            tokens = batch.tokens.float().to(device)
            if changed.any():  # what the teacher makes of the augmented views
                tokens[changed.to(device)] = self._teacher(batch.view[changed])
            return tokens
        if changed.any():
            return self._teacher(batch.view)
        return self._unchanged_tokens(batch.view, batch.codes)

    def losses(self, model: torch.nn.Module, batch: TrainBatch, g: torch.Generator) -> dict[str, torch.Tensor]:
        device = self.run.device
        t = torch.randint(0, self.components["scheduler"].config.num_train_timesteps, (len(batch.indices),),
                          generator=g)
        z0 = batch.z0
        fresh = batch.changed if z0 is not None else torch.ones(len(batch.indices), dtype=torch.bool)
        if fresh.any():  # augmented masks (or no cache): encoded by the frozen mask autoencoder, as the cache would be
            with torch.no_grad():
                masks = (class_masks(batch.masks[fresh], self.num_classes) if self.num_classes > 1 else
                         batch.masks[fresh][:, None].expand(-1, 3, -1, -1)).to(device).float()
                latents = self.frozen_mask_latents(masks.contiguous(memory_format=torch.channels_last)).float().cpu()
            if z0 is None:
                z0 = latents
            else:
                z0 = z0.clone()
                z0[fresh] = latents
        noise = torch.randn(z0.shape, generator=g)
        tokens = self._teacher_tokens(batch)  # the teacher's view of the un-jittered image, as cached
        images = self.run.colour_jitter(batch.images, g)  # drawn after t and noise: those stay as without jitter
        x = images.to(device).float() / 255 * 2 - 1
        with self.run.accelerator.autocast():
            return model(x, z0.to(device), noise.to(device), t.to(device), tokens)

    @property
    def num_classes(self) -> int:
        return self.run.data.num_classes

    def _pipe(self, model: LeafTrainingModel) -> LeafSegPipeline:
        labels = self.run.data.labels
        pipe = LeafSegPipeline(self.autoencoder, model.image_encoder, model.unet, self.components["scheduler"],
                               **volume_config(self.cfg), labels=labels.to_dict() if labels is not None else None)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def validate(self, model: LeafTrainingModel) -> list[float]:
        """Per-image Dice on the val samples at the processing resolution (single step); with several structures
        the mean over them of each one's Dice."""
        pipe, device = self._pipe(model), self.run.device
        scores = []
        for images, masks in self.run.data.val.batches(16):
            x = images.to(device).float() / 255 * 2 - 1
            with self.run.accelerator.autocast():
                latents = pipe.predict_latents(x)[0]
            if self.num_classes > 1:
                pred = pipe.latents_to_labels(latents).cpu().numpy()
                scores += [mean_class_dice(p, gt, self.num_classes) for p, gt in zip(pred, masks.numpy())]
            else:
                soft = pipe.latents_to_soft_masks(latents)
                scores += [dice_score(p, gt) for p, gt in zip((soft > 0.5).cpu().numpy(), masks.numpy())]
        return scores

    def pipeline(self, model: LeafTrainingModel) -> LeafSegPipeline:
        return self._pipe(model)
