"""Tiny random components shared by the fast tests (seconds on a CPU)."""

from __future__ import annotations

import json

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from leafseg.config import load_config
from leafseg.diffusion import make_scheduler
from leafseg.models.denoiser import build_unet
from leafseg.models.image_encoder import ImageEncoder
from leafseg.pipelines import LeafSegPipeline

# Tests that compare two trainings bit for bit pin them to the CPU: on CUDA, cuDNN's default convolution backward is
# not deterministic, so two CUDA runs differ in the last bits, resumed or not (a budget-resume test failed so on an
# H100, 2026-11-27, while the same comparison of two uninterrupted runs happened to pass).
BITWISE = "run.device=cpu"

TINY_AE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [8, 8, 8, 8],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 32, "mid_block_add_attention": False,
}
TINY_UNET = {"block_out_channels": [16, 32], "norm_num_groups": 8, "attention_head_dim": 8,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}


def tiny_autoencoder(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_AE).eval()


def tiny_pipeline(prediction_type: str = "sample", seed: int = 0, resolution: int = 32) -> LeafSegPipeline:
    ae = tiny_autoencoder(seed)
    image_encoder = ImageEncoder.from_autoencoder(ae, dropout=0.2).eval()
    torch.manual_seed(seed + 1)
    unet = build_unet(latent_channels=4, sample_size=resolution // 8, **TINY_UNET).eval()
    return LeafSegPipeline(autoencoder=ae, image_encoder=image_encoder, unet=unet,
                           scheduler=make_scheduler(prediction_type))


def tiny_config(run_dir, data_root, *extra):
    ae = json.dumps(TINY_AE).replace(" ", "")
    unet = [f"unet.{k}={json.dumps(v).replace(' ', '')}" for k, v in TINY_UNET.items()]
    return load_config(None, [
        f"run.output_dir={run_dir}", f"data.root={data_root}", "data.resolution=32",
        "data.split.train=0.5", "data.split.val=0.25", "data.split.test=0.25",
        "autoencoder.kind=kl", f"autoencoder.config={ae}", *unet,
        "align.projector_dim=32", "align.teacher_image_size=32",
        "train.batch_size=2", "train.max_steps=4", "train.warmup_steps=2",
        "train.lr=1e-3", "train.val_every=2", "train.checkpoint_every=2", "train.log_every=1",
        "train.mixed_precision=no", *extra,
    ])


def saved_weights(run_dir, part: str = "unet", checkpoint: str = "model-last") -> dict[str, torch.Tensor]:
    """One part's tensors as a run saved them (diffusers names the file; the glob finds it for any part)."""
    return load_file(str(next((run_dir / checkpoint / part).glob("*.safetensors"))))
