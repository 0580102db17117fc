"""LEAF training under accelerate: one script for one CPU, one GPU or ``accelerate launch --num_processes N``.

One step (LEAF.md, "Training step"): z^x = E_theta(image) * s; z0 = E(mask) * s (frozen); t ~ U{0..T-1};
z_t = sqrt(abar) z0 + sqrt(1 - abar) eps; pred, h = f_theta([z^x, z_t], t); loss = L1(pred, target) +
lambda * mean(-cos(phi(h), teacher tokens)).

Everything random in a step (batch order, flips, t, eps) is drawn from generators seeded by (seed, step, rank), so
a resumed run continues exactly as an uninterrupted one, and each rank reads its own shard of every global batch.
Frozen, deterministic quantities (mask latents and teacher tokens, per training image and flip) are computed once
and cached on disk in the run folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import data as D
from .config import to_container
from .datasets import find_dataset, load_or_create_dataset_split
from .diffusion import add_noise, make_scheduler, training_target
from .metrics import dice as dice_score
from .models import autoencoder as ae_ops
from .models.alignment import Projector, alignment_loss, feature_map_to_tokens
from .models.denoiser import (DownBlockFeatures, build_unet, down_block_grids, load_pretrained_unet,
                              set_unet_dropout)
from .models.image_encoder import ImageEncoder
from .pipeline import LeafSegPipeline

CHECKPOINT = "checkpoint-last"
BEST, LAST = "model-best", "model-last"


# ------------------------------------------------------------------------------------------------ randomness

def seeded(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers (seed, step, rank, ...), independent across tuples."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator("cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def batch_indices(n: int, batch_size: int, world: int, rank: int, step: int, seed: int) -> torch.Tensor:
    """This rank's sample indices at ``step``: epoch-wise seeded permutations, global batch split across ranks."""
    per_step = batch_size * world
    steps_per_epoch = max(1, n // per_step)
    epoch, k = divmod(step, steps_per_epoch)
    perm = torch.randperm(n, generator=seeded(seed, 1, epoch))
    while len(perm) < per_step:  # fewer images than one global batch: wrap around
        perm = torch.cat([perm, perm])
    chunk = perm[k * per_step:(k + 1) * per_step]
    return chunk[rank * batch_size:(rank + 1) * batch_size]


def flip_codes(hflip: bool, vflip: bool) -> list[tuple[bool, bool]]:
    return [(h, v) for v in ((False, True) if vflip else (False,)) for h in ((False, True) if hflip else (False,))]


# ---------------------------------------------------------------------------------------------------- models

def build_components(cfg: DictConfig) -> dict:
    """Autoencoder (frozen), image encoder (copy of its encoder), UNet (2C in), scheduler."""
    ac = cfg.autoencoder
    ae = ae_ops.load_autoencoder(ac.kind, ac.path, to_container(ac)["config"], ac.scaling_factor)
    factor = ae_ops.downscale_factor(ae)
    if cfg.data.resolution % factor:
        raise ValueError(f"data.resolution {cfg.data.resolution} must be a multiple of the autoencoder's {factor}")
    latent_size = cfg.data.resolution // factor
    channels = ae_ops.latent_channels(ae)
    image_encoder = ImageEncoder.from_autoencoder(ae, dropout=cfg.image_encoder.dropout)
    image_encoder.freeze_leading_layers(int(cfg.image_encoder.get("frozen_layers", 0)))
    uc = to_container(cfg.unet)
    pretrained = uc.pop("pretrained")
    if pretrained:
        unet = set_unet_dropout(load_pretrained_unet(pretrained, channels, sample_size=latent_size), uc["dropout"])
    else:
        unet = build_unet(channels, latent_size, **uc)
    scheduler = make_scheduler(**to_container(cfg.diffusion))
    return {"autoencoder": ae, "image_encoder": image_encoder, "unet": unet, "scheduler": scheduler}


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


# ----------------------------------------------------------------------------------------------------- caches

@torch.no_grad()
def compute_cache(fn, images_u8: torch.Tensor, codes, device, batch: int, desc: str) -> torch.Tensor:
    """fn(images in [0, 1] on device) for every image and flip code -> (N, len(codes), ...) on CPU. Inputs go in
    channels-last, which makes the frozen convolutions 1.3-1.7x faster on a CPU (same values to 1e-5).

    Prints what it is about to compute and an estimate of how long it will take (from the first batch), and keeps
    its progress bar on screen: these caches are the minutes before the first training step."""
    n, total = len(images_u8), len(images_u8) * len(codes)
    slots, started, done = [], time.time(), 0
    bar = tqdm(total=total, desc=desc, unit="img")
    for h, v in codes:
        parts = []
        for i in range(0, n, batch):
            x = D.flip(images_u8[i:i + batch], h, v).to(device).float().div_(255)
            parts.append(fn(x.contiguous(memory_format=torch.channels_last)).float().cpu())
            done += len(x)
            bar.update(len(x))
            if done == len(x) and total > done:
                estimate = (time.time() - started) / done * total
                tqdm.write(f"{desc}: {n} images x {len(codes)} flip(s) = {total} forward passes, "
                           f"about {estimate:.0f} s (measured on the first batch)")
        slots.append(torch.cat(parts))
    bar.close()
    return torch.stack(slots, dim=1)


def mirror_tokens(tokens: torch.Tensor, grid: int, hflip: bool, vflip: bool) -> torch.Tensor:
    """Flip (N, grid*grid, D) row-major tokens as the image would be flipped."""
    n, _, d = tokens.shape
    return D.flip(tokens.view(n, grid, grid, d).permute(0, 3, 1, 2), hflip, vflip).permute(0, 2, 3, 1).reshape(
        n, grid * grid, d)


def cached(path: Path, accelerator: Accelerator, build) -> torch.Tensor:
    """Load ``path`` or build it on the main process (atomic write), then share through the file."""
    if not path.exists() and accelerator.is_main_process:
        tensor = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        save_file({"value": tensor.contiguous()}, str(tmp))
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return load_file(str(path))["value"]


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------ checkpoints

def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder into place; the old one is removed only after the new one is there."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def ema_weights(ema: EMAModel | None, parameters):
    """Swap the EMA weights in (validation, export) and the trained ones back afterwards; no-op without EMA."""
    if ema is None:
        yield
        return
    params = list(parameters)
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


@contextmanager
def eval_mode(module: torch.nn.Module):
    """module.eval() for the duration, back to train mode afterwards."""
    module.eval()
    try:
        yield
    finally:
        module.train()


def export_pipeline(components: dict, model: LeafTrainingModel, ema: EMAModel | None, path: Path) -> None:
    """Write the inference pipeline (EMA UNet if any; no projector, no teacher) atomically."""
    with ema_weights(ema, model.unet.parameters()):
        save_pipeline(LeafSegPipeline(autoencoder=components["autoencoder"], image_encoder=model.image_encoder,
                                      unet=model.unet, scheduler=components["scheduler"]), path)


def save_pipeline(pipe, path: Path) -> None:
    """save_pretrained (safetensors) into a temporary folder, then swap it into place."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    replace_dir(tmp, path)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_val_dice: float | None
    best_step: int | None
    history: list[dict]


def build_alignment_teacher(ac: DictConfig, device="cpu"):
    """The frozen teacher of config section ``align`` on ``device``, in ``align.teacher_dtype``."""
    from .models.teacher import build_teacher

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if ac.teacher_dtype not in dtypes:
        raise ValueError(f"align.teacher_dtype must be float32 or bfloat16, got {ac.teacher_dtype!r}")
    teacher = build_teacher(ac.teacher, checkpoint=ac.teacher_checkpoint, layer=ac.teacher_layer,
                            image_size=ac.teacher_image_size, antialias=bool(ac.teacher_antialias))
    return teacher.to(device, dtypes[ac.teacher_dtype])


def make_lr_scheduler(optimizer: torch.optim.Optimizer, tc: DictConfig):
    """diffusers' schedule ``train.lr_schedule`` with ``train.warmup_steps`` linear warm-up over ``max_steps``."""
    names = ("constant_with_warmup", "cosine", "linear")
    if tc.lr_schedule not in names:
        raise ValueError(f"train.lr_schedule must be one of {names}, got {tc.lr_schedule!r}")
    return get_scheduler(tc.lr_schedule, optimizer, num_warmup_steps=int(tc.warmup_steps),
                         num_training_steps=int(tc.max_steps))


def make_ema(model: torch.nn.Module, ec: DictConfig, device) -> EMAModel | None:
    """diffusers EMAModel of ``model`` per config section ``train.ema`` (None when disabled). ``warmup: false`` is
    EMAModel's default form, decay = min(decay, (1 + step) / (10 + step)); ``warmup: true`` the warm-up form."""
    if not ec.enabled:
        return None
    ema = EMAModel(model.parameters(), decay=float(ec.decay), use_ema_warmup=bool(ec.warmup), power=float(ec.power),
                   model_cls=type(model), model_config=model.config)
    ema.to(device)
    return ema


def resolve_mixed_precision(value: str | bool) -> str:
    if value is False:  # YAML reads an unquoted `no` as false
        value = "no"
    if value == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if value not in ("no", "bf16", "fp16"):
        raise ValueError(f"train.mixed_precision must be auto, no, bf16 or fp16, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------------------ train

def start_run(cfg: DictConfig, resume: bool) -> tuple[Accelerator, Path]:
    """Accelerator, run folder and config.yaml; refuses to overwrite a run unless resuming."""
    tc = cfg.train
    run_dir = Path(cfg.run.output_dir)
    if tc.num_threads:
        torch.set_num_threads(int(tc.num_threads))
    accelerator = Accelerator(
        # cpu=True on machines without CUDA lets `accelerate launch --multi_gpu --num_processes N` (torchrun) run N
        # CPU processes over gloo instead of silently falling back to N independent single-process runs.
        cpu=not torch.cuda.is_available(),
        mixed_precision=resolve_mixed_precision(tc.mixed_precision), log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
    )
    if (run_dir / CHECKPOINT).exists() and not resume:  # checked on every rank: no rank waits for one that stopped
        raise FileExistsError(f"{run_dir} already holds a training run; pass --resume to continue it, "
                              "or choose another run.output_dir")
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            OmegaConf.save(cfg, run_dir / "config.yaml")
    accelerator.wait_for_everyone()
    return accelerator, run_dir


@dataclass
class RunData:
    split: dict
    train_pairs: list
    train_images: torch.Tensor             # (N, 3, R, R) uint8
    train_masks: torch.Tensor              # (N, R, R) bool
    val_images: torch.Tensor | None
    val_masks: torch.Tensor | None


def load_run_data(cfg: DictConfig, run_dir: Path, accelerator: Accelerator) -> RunData:
    """The dataset in its layout, the split file (made once by the main process), train and val arrays."""
    layout = cfg.data.get("layout", "folder")
    pairs = find_dataset(cfg.data.root, layout, cfg.data.images, cfg.data.masks)
    split_file = Path(cfg.data.split_file or run_dir / "split.json")
    sc = cfg.data.split
    if accelerator.is_main_process:
        load_or_create_dataset_split(split_file, pairs, layout, sc.train, sc.val, sc.test, sc.seed)
    accelerator.wait_for_everyone()
    split = D.read_split(split_file, [p.stem for p in pairs])
    train_pairs, val_pairs = D.select(pairs, split["train"]), D.select(pairs, split["val"])
    if cfg.train.val_max_images:
        val_pairs = val_pairs[: int(cfg.train.val_max_images)]
    res = int(cfg.data.resolution)
    train_images, train_masks = D.load_arrays(train_pairs, res, "loading train")
    val_images, val_masks = D.load_arrays(val_pairs, res, "loading val") if val_pairs else (None, None)
    return RunData(split, train_pairs, train_images, train_masks, val_images, val_masks)


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: dict, export_last) -> None:
    """accelerate state + trainer_state.json into checkpoint-last (atomic swap), then export model-last."""
    tmp = run_dir / f".{CHECKPOINT}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        D.write_json_atomic(state, tmp / "trainer_state.json")
        replace_dir(tmp, run_dir / CHECKPOINT)
        export_last(run_dir / LAST)
    accelerator.wait_for_everyone()


def load_trainer_state(accelerator: Accelerator, run_dir: Path, resume: bool) -> dict:
    if not resume:
        return {"step": 0, "best_val_dice": None, "best_step": None, "history": []}
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: nothing to resume")
    accelerator.load_state(str(checkpoint))
    return json.loads((checkpoint / "trainer_state.json").read_text())


class StepBookkeeping:
    """What every training loop does around its steps: the progress bar, an optional step-0 validation, logging,
    validation with best-model selection on the val split (main process), checkpoints, and the end of the run
    (model-best when there is no val split, training curves, tracker shutdown)."""

    def __init__(self, accelerator: Accelerator, cfg: DictConfig, state: dict, run_dir: Path, validate, export,
                 has_val: bool, desc: str):
        self.accelerator, self.tc, self.state, self.run_dir = accelerator, cfg.train, state, run_dir
        self.validate, self.export, self.has_val = validate, export, has_val
        self.max_steps = int(self.tc.max_steps)
        self.t_start = time.time()
        self.progress = tqdm(total=self.max_steps, initial=int(state["step"]), desc=desc,
                             disable=not accelerator.is_main_process)
        if self.tc.get("val_at_start") and state["step"] == 0 and has_val:  # the untrained model, on the curve
            self._validate(0)

    def _validate(self, step: int) -> None:
        accelerator, state = self.accelerator, self.state
        if accelerator.is_main_process:
            val_dice = self.validate()
            accelerator.log({"val_dice": val_dice}, step=step)
            state["history"].append({"step": step, "val_dice": val_dice})
            if state["best_val_dice"] is None or val_dice > state["best_val_dice"]:
                state["best_val_dice"], state["best_step"] = val_dice, step
                self.export(self.run_dir / BEST)
            tqdm.write(f"step {step}: val Dice {val_dice:.4f} (best {state['best_val_dice']:.4f} "
                       f"at step {state['best_step']})")
        accelerator.wait_for_everyone()

    def after_step(self, step: int, losses: dict[str, torch.Tensor], extra_logs=None) -> None:
        """Call on every rank after optimiser step ``step`` (1-based). ``extra_logs`` is a callable giving more
        scalars to log (only called on logging steps, so it may synchronise with the device)."""
        tc, last = self.tc, step == self.max_steps
        self.progress.update(1)
        if step % int(tc.log_every) == 0 or last:
            logs = {k: self.accelerator.reduce(v.detach(), reduction="mean").item() for k, v in losses.items()}
            logs.update(extra_logs() if extra_logs else {})
            self.accelerator.log(logs, step=step)
            self.progress.set_postfix(loss=f"{logs['loss']:.4f}")
            self.state["history"].append({"step": step, **logs, "elapsed_s": round(time.time() - self.t_start, 1)})
        if self.has_val and (step % int(tc.val_every) == 0 or last):
            self._validate(step)
        self.state["step"] = step
        if step % int(tc.checkpoint_every) == 0 or last:
            save_checkpoint(self.accelerator, self.run_dir, self.state, self.export)

    def finish(self) -> TrainResult:
        self.progress.close()
        accelerator, state = self.accelerator, self.state
        if accelerator.is_main_process:
            if not self.has_val:
                self.export(self.run_dir / BEST)  # no val split: best = last
            if state["history"]:
                from .plots import plot_training_curves

                plot_training_curves(state["history"], self.run_dir / "logs" / "curves.png")
        accelerator.end_training()
        return TrainResult(self.run_dir, int(state["step"]), state["best_val_dice"], state["best_step"],
                           state["history"])


def train(cfg: DictConfig, resume: bool = False) -> TrainResult:
    """Train the configured method (``method: leaf`` or ``supervised_unet``)."""
    method = cfg.get("method", "leaf")
    if method == "supervised_unet":
        from .baseline import train_supervised

        return train_supervised(cfg, resume)
    if method != "leaf":
        raise ValueError(f"method must be leaf or supervised_unet, got {method!r}")
    tc, ac = cfg.train, cfg.align
    accelerator, run_dir = start_run(cfg, resume)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    data = load_run_data(cfg, run_dir, accelerator)
    split, train_pairs = data.split, data.train_pairs
    train_images, train_masks, val_images, val_masks = data.train_images, data.train_masks, data.val_images, \
        data.val_masks
    res = int(cfg.data.resolution)

    # models -----------------------------------------------------------------------------------------------
    set_seed(int(cfg.run.seed))  # identical initialisation on every rank
    components = build_components(cfg)
    ae = components["autoencoder"].to(device)
    scale = ae_ops.latent_scale(ae)
    unet: UNet2DModel = components["unet"]
    latent_size = int(unet.config.sample_size)
    grid = down_block_grids(unet, latent_size)[int(ac.layer)]
    teacher = projector = None
    if ac.enabled:
        teacher = build_alignment_teacher(ac, device)
        channels = unet.down_blocks[int(ac.layer)].resnets[-1].out_channels
        projector = Projector(channels, teacher.feature_dim, int(ac.projector_dim))
    model = LeafTrainingModel(components["image_encoder"], unet, projector, components["scheduler"], cfg, scale)

    # frozen targets, once per training image and flip -----------------------------------------------------
    codes = flip_codes(cfg.data.hflip, cfg.data.vflip)
    # Everything the cached tensors depend on, so runs can share a cache folder (run.cache_dir) safely.
    key = _digest(str(Path(cfg.data.root).resolve()), cfg.data.get("layout", "folder"), split["train"], codes, res,
                  to_container(cfg.autoencoder), scale)
    mask_u8 = train_masks[:, None].expand(-1, 3, -1, -1).to(torch.uint8) * 255
    cache_dir = Path(cfg.run.get("cache_dir") or run_dir / "cache")
    z0_cache = cached(cache_dir / f"mask-latents-{key}.safetensors", accelerator, lambda: compute_cache(
        lambda m: ae_ops.encode(ae, m * 2 - 1) * scale, mask_u8, codes, device, 16, "mask latents"))
    tokens_cache = None
    if ac.flip_tokens not in ("recompute", "mirror"):
        raise ValueError(f"align.flip_tokens must be recompute or mirror, got {ac.flip_tokens!r}")
    if teacher is not None and ac.cache:
        tkey = _digest(key, teacher.name, grid, ac.flip_tokens, str(ac.teacher_dtype))

        def build_tokens():
            if ac.flip_tokens == "recompute":
                return compute_cache(lambda x: teacher(x, grid).half(), train_images, codes, device, 8,
                                     "teacher tokens")
            plain = compute_cache(lambda x: teacher(x, grid).half(), train_images, [(False, False)], device, 8,
                                  "teacher tokens")[:, 0]
            return torch.stack([mirror_tokens(plain, grid, h, v) for h, v in codes], dim=1)

        tokens_cache = cached(cache_dir / f"teacher-{tkey}.safetensors", accelerator, build_tokens)

    # optimisation -----------------------------------------------------------------------------------------
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, betas=tuple(tc.adam_betas))
    lr_scheduler = make_lr_scheduler(optimizer, tc)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    base = accelerator.unwrap_model(model)
    ema = make_ema(base.unet, tc.ema, device)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    state = load_trainer_state(accelerator, run_dir, resume)
    if accelerator.is_main_process:
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                for k, v in _flatten(to_container(cfg)).items()}
        accelerator.init_trackers("leafseg", config=flat)

    def export(path: Path) -> None:
        export_pipeline(components, base, ema, path)

    def validate() -> float:
        """Mean per-image Dice on the val split at the processing resolution (single step, EMA UNet)."""
        with ema_weights(ema, base.unet.parameters()), eval_mode(base):
            pipe = LeafSegPipeline(ae, base.image_encoder, base.unet, components["scheduler"])
            pipe.set_progress_bar_config(disable=True)
            scores = []
            for i in range(0, len(val_images), 16):
                x = val_images[i:i + 16].to(device).float() / 255 * 2 - 1
                with accelerator.autocast():
                    soft = pipe.latents_to_soft_masks(pipe.predict_latents(x)[0])
                for pred, gt in zip((soft > 0.5).cpu().numpy(), val_masks[i:i + 16].numpy()):
                    scores.append(dice_score(pred, gt))
            return float(np.mean(scores))

    # loop -------------------------------------------------------------------------------------------------
    seen = []
    n_train, bs, seed = len(train_pairs), int(tc.batch_size), int(cfg.run.seed)
    step = int(state["step"])
    book = StepBookkeeping(accelerator, cfg, state, run_dir, validate, export, val_images is not None, "training")
    model.train()
    while step < int(tc.max_steps):
        idx = batch_indices(n_train, bs, world, rank, step, seed)
        g = seeded(seed, 2, step, rank)
        code = torch.randint(len(codes), (len(idx),), generator=g)
        t = torch.randint(0, components["scheduler"].config.num_train_timesteps, (len(idx),), generator=g)
        images = torch.stack([D.flip(train_images[i], *codes[c]) for i, c in zip(idx.tolist(), code.tolist())])
        z0 = z0_cache[idx, code]
        noise = torch.randn(z0.shape, generator=g)
        tokens = None
        if teacher is not None:
            if tokens_cache is not None:
                tokens = tokens_cache[idx, code].float().to(device)
            elif ac.flip_tokens == "recompute":
                with torch.no_grad():
                    tokens = teacher(images.to(device).float() / 255, grid)
            else:
                with torch.no_grad():
                    plain = teacher(train_images[idx].to(device).float() / 255, grid)
                tokens = torch.stack([mirror_tokens(p[None], grid, *codes[c])[0] for p, c in zip(plain, code.tolist())])
        if tc.log_samples:
            seen.extend(idx.tolist())
        x = images.to(device).float() / 255 * 2 - 1
        with accelerator.autocast():
            losses = model(x, z0.to(device), noise.to(device), t.to(device), tokens)
        accelerator.backward(losses["loss"])
        grad_norm = accelerator.clip_grad_norm_(params, tc.grad_clip) if tc.grad_clip else None
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(base.unet.parameters())
        step += 1
        book.after_step(step, losses, lambda gn=grad_norm: {"lr": lr_scheduler.get_last_lr()[0],
                                                            **({} if gn is None else {"grad_norm": float(gn)})})
    if tc.log_samples:  # what each rank read and ended with: lets tests check sharding and replica sync
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (run_dir / "logs" / f"samples-rank{rank}.json").write_text(json.dumps(seen))
        torch.save({k: v.detach().cpu() for k, v in base.state_dict().items()},
                   run_dir / "logs" / f"final-weights-rank{rank}.pt")
    return book.finish()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

