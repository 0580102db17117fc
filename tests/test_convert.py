"""CompVis/LDM -> diffusers conversion: exactness against reference outputs of the original code, full-size key
coverage on names/shapes only (meta models), loader safety, error messages, save/load round trips."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMPipeline, DDIMScheduler, UNet2DModel
from diffusers.models.attention_processor import Attention
from safetensors.torch import save_file

from leafseg.conversion import (
    UnsafeCheckpointError,
    check_kl_vae_mapping,
    check_ldm_unet_mapping,
    convert_kl_vae,
    convert_ldm_checkpoints,
    convert_ldm_unet,
    kl_vae_config_from_state_dict,
    ldm_unet_config_from_state_dict,
    load_checkpoint,
)
from leafseg.cli import main
from leafseg.models.ldm_unet import LDMUNet2DModel, load_converted_unet, unet_from_config

TOLERANCE = 1e-4
UNET_PARAMS_M, VAE_PARAMS_M = 295.0, 83.7  # LSUN-Churches LDM UNet, kl-f8 autoencoder


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


@functools.cache
def _load(path: str) -> dict:
    return load_checkpoint(path)


@functools.cache
def _io(path: str) -> dict:
    return torch.load(path, weights_only=True)


def unet_sd(ref: Path) -> dict:
    return dict(_load(str(ref / "ldm_unet_small.ckpt")))


def vae_sd(ref: Path) -> dict:
    return dict(_load(str(ref / "kl_f8_small.ckpt")))


def unet_io(ref: Path) -> dict:
    return _io(str(ref / "ldm_unet_small_io.pt"))


def vae_io(ref: Path) -> dict:
    return _io(str(ref / "kl_f8_small_io.pt"))


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, *, except_config: tuple[str, ...] = ()) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    def config(m):
        return {k: v for k, v in m.config.items() if not k.startswith("_") and k not in except_config}

    assert type(a) is type(b) and config(a) == config(b)


@torch.no_grad()
def unet_out(unet, io: dict) -> torch.Tensor:
    return unet(io["sample"], io["timestep"]).sample


@torch.no_grad()
def vae_out(vae, io: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dist = vae.encode(io["image"]).latent_dist
    return dist.mean, dist.logvar, vae.decode(io["latent_mean"]).sample


# ---------------------------------------------------------------------------------------------------------------
# exactness against the reference implementation


def test_unet_reproduces_reference_output(reference_dir):
    io = unet_io(reference_dir)
    sd = unet_sd(reference_dir)
    config = ldm_unet_config_from_state_dict(sd)
    assert config["num_attention_heads"] == io["config"]["num_heads"] == 8
    assert config["block_out_channels"] == [io["config"]["model_channels"] * m for m in io["config"]["channel_mult"]]
    assert config["layers_per_block"] == io["config"]["num_res_blocks"]
    unet = convert_ldm_unet(sd, config)
    assert isinstance(unet, LDMUNet2DModel) and isinstance(unet, UNet2DModel)
    # the checkpoint has no EMA copies (only model_ema.decay): the reference used the raw weights
    assert not any(k.startswith("model_ema.diffusion_model") for k in sd)
    out = unet_out(unet, io)
    for i, t in enumerate(io["timestep"].tolist()):
        assert rel_err(out[i], io["output"][i]) < TOLERANCE, f"timestep {t}"
    assert rel_err(out, io["output"]) < TOLERANCE


def test_vae_reproduces_reference_latents_and_decoding(reference_dir):
    io = vae_io(reference_dir)
    sd = vae_sd(reference_dir)
    config = kl_vae_config_from_state_dict(sd)
    ref_cfg = io["config"]
    assert config["block_out_channels"] == [ref_cfg["ch"] * m for m in ref_cfg["ch_mult"]]
    assert config["latent_channels"] == ref_cfg["z_channels"] == ref_cfg["embed_dim"]
    assert config["scaling_factor"] == 0.18215
    vae = convert_kl_vae(sd, config)
    mean, logvar, decoded = vae_out(vae, io)
    assert rel_err(mean, io["latent_mean"]) < TOLERANCE
    assert rel_err(logvar, io["latent_logvar"]) < TOLERANCE
    assert rel_err(decoded, io["decoded"]) < TOLERANCE


# ---------------------------------------------------------------------------------------------------------------
# full-size networks: names and shapes only


def _full_size(reference_dir, name: str) -> dict:
    return json.loads((reference_dir / "ldm_full_size_keys.json").read_text())[name]


def test_full_size_unet_key_coverage(reference_dir):
    entry = _full_size(reference_dir, "ldm_lsun_churches_unet")
    shapes, ref_cfg = entry["keys"], entry["config"]
    config = ldm_unet_config_from_state_dict(shapes)
    assert config["block_out_channels"] == [ref_cfg["model_channels"] * m for m in ref_cfg["channel_mult"]]
    assert config["layers_per_block"] == ref_cfg["num_res_blocks"]
    assert config["resnet_time_scale_shift"] == "scale_shift" and config["downsample_type"] == "resnet"
    assert config["num_attention_heads"] == ref_cfg["num_heads"]
    # attention_resolutions (1, 2, 4, 8) of 5 levels: the last level (ds=16) has none
    assert config["down_block_types"] == ["AttnDownBlock2D"] * 4 + ["ResnetDownsampleBlock2D"]
    mapping = check_ldm_unet_mapping(shapes, config)  # raises on any unused / unfilled key or shape mismatch
    assert set(mapping.values()) == set(shapes) - {"model_ema.decay"}
    with torch.device("meta"):
        unet = unet_from_config(config)
    assert set(mapping) == set(unet.state_dict())
    n_params = sum(p.numel() for p in unet.parameters())
    assert n_params == sum(math.prod(s) for k, s in shapes.items() if k != "model_ema.decay")
    assert round(n_params / 1e6, 1) == UNET_PARAMS_M


def test_full_size_vae_key_coverage(reference_dir):
    entry = _full_size(reference_dir, "kl_f8_vae")
    shapes, ref_cfg = entry["keys"], entry["config"]
    config = kl_vae_config_from_state_dict(shapes)
    assert config["block_out_channels"] == [ref_cfg["ch"] * m for m in ref_cfg["ch_mult"]]
    assert config["layers_per_block"] == ref_cfg["num_res_blocks"]
    mapping = check_kl_vae_mapping(shapes, config)
    assert set(mapping.values()) == set(shapes)
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
    assert set(mapping) == set(vae.state_dict())
    n_params = sum(p.numel() for p in vae.parameters())
    assert n_params == sum(math.prod(s) for s in shapes.values())
    assert round(n_params / 1e6, 1) == VAE_PARAMS_M


# ---------------------------------------------------------------------------------------------------------------
# loading safety and error messages


class Payload:
    """Any class: unpickling it would need an import, so weights_only loading must refuse it."""


def test_pickle_with_custom_class_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused, loading it would execute code") and "Payload" in message
    assert isinstance(info.value, ValueError)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "model.ckpt"
    with pytest.raises(FileNotFoundError, match="nowhere/model.ckpt"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nowhere/model.ckpt"):
        convert_ldm_checkpoints(unet_path=path, out_dir=tmp_path / "out")


def test_load_checkpoint_formats(tmp_path):
    tensors = {"a.weight": torch.randn(3, 2), "b": torch.arange(4)}
    save_file(tensors, tmp_path / "x.safetensors")
    torch.save({"state_dict": {"state_dict": tensors, "step": 3}, "global_step": 7}, tmp_path / "x.pt")
    for name in ("x.safetensors", "x.pt"):
        loaded = load_checkpoint(tmp_path / name)
        assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    (tmp_path / "x.onnx").write_bytes(b"0")
    with pytest.raises(ValueError, match="unknown checkpoint type"):
        load_checkpoint(tmp_path / "x.onnx")


def test_shape_mismatch_names_key_and_both_shapes(reference_dir):
    sd = vae_sd(reference_dir)
    key = "decoder.up.0.block.1.conv1.weight"
    bad = {**sd, key: torch.zeros(32, 32, 1, 1)}
    with pytest.raises(ValueError) as info:
        convert_kl_vae(bad)
    message = str(info.value)
    assert key in message and "decoder.up_blocks.3.resnets.1.conv1.weight" in message
    assert "(32, 32, 1, 1)" in message and "(32, 32, 3, 3)" in message

    sd = unet_sd(reference_dir)
    key = "model.diffusion_model.output_blocks.3.0.emb_layers.1.weight"
    with pytest.raises(ValueError) as info:
        convert_ldm_unet({**sd, key: torch.zeros(7, 128)})
    message = str(info.value)
    assert key in message and "(7, 128)" in message and "(256, 128)" in message


def test_unused_and_unfilled_keys_are_listed(reference_dir):
    sd = unet_sd(reference_dir)
    extra = "model.diffusion_model.input_blocks.1.1.surprise.weight"
    with pytest.raises(ValueError, match=r"not used by the conversion: .*surprise"):
        convert_ldm_unet({**sd, extra: torch.zeros(1)})
    with pytest.raises(ValueError, match=r"not used by the conversion: stray"):
        convert_ldm_unet({**sd, "stray": torch.zeros(1)})
    gone = "model.diffusion_model.middle_block.1.proj_out.bias"
    with pytest.raises(ValueError, match=r"mid_block\.attentions\.0\.to_out\.0\.bias"):
        convert_ldm_unet({k: v for k, v in sd.items() if k != gone})
    vae = vae_sd(reference_dir)
    assert "loss.logvar" in vae  # ignored on purpose
    with pytest.raises(ValueError, match=r"not used by the conversion: encoder\.extra"):
        convert_kl_vae({**vae, "encoder.extra": torch.zeros(1)})


def test_ema_weights(reference_dir):
    sd = unet_sd(reference_dir)
    with pytest.raises(ValueError, match="no EMA copy"):
        convert_ldm_unet(sd, use_ema=True)
    # a checkpoint with EMA copies (LDM LitEma naming: dots removed), here the raw weights times 0.5
    raw = {k: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    ema = {"model_ema." + k[len("model."):].replace(".", ""): v * 0.5 for k, v in raw.items()}
    full = {**sd, **ema, "model_ema.num_updates": torch.tensor(10), "betas": torch.linspace(0, 1, 10)}
    unet_raw = convert_ldm_unet(full)
    unet_ema = convert_ldm_unet(full, use_ema=True)
    assert torch.equal(unet_raw.conv_in.weight, sd["model.diffusion_model.input_blocks.0.0.weight"])
    assert torch.equal(unet_ema.conv_in.weight, 0.5 * sd["model.diffusion_model.input_blocks.0.0.weight"])
    assert torch.equal(unet_ema.mid_block.attentions[0].to_k.bias, 0.5 * unet_raw.mid_block.attentions[0].to_k.bias)


# ---------------------------------------------------------------------------------------------------------------
# files: a whole LatentDiffusion checkpoint, atomic folders, save -> from_pretrained, CLI


def test_save_and_from_pretrained_round_trip(reference_dir, tmp_path):
    out = tmp_path / "converted"
    written = convert_ldm_checkpoints(reference_dir / "ldm_unet_small.ckpt", reference_dir / "kl_f8_small.ckpt", out)
    assert written == {"unet": out / "unet", "vae": out / "vae"}
    assert sorted(p.name for p in out.iterdir()) == ["unet", "vae"]  # no temporary folders left
    for name in ("unet", "vae"):
        assert (out / name / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["_class_name"] == "LDMUNet2DModel" and config["num_attention_heads"] == 8

    unet = LDMUNet2DModel.from_pretrained(out / "unet", local_files_only=True)
    assert type(load_converted_unet(out / "unet")) is LDMUNet2DModel
    vae = AutoencoderKL.from_pretrained(out / "vae", local_files_only=True)
    unet_ref = convert_ldm_unet(unet_sd(reference_dir))
    vae_ref = convert_kl_vae(vae_sd(reference_dir))
    assert_same_weights(unet, unet_ref)
    assert_same_weights(vae, vae_ref)
    io = unet_io(reference_dir)
    assert torch.equal(unet_out(unet, io), unet_out(unet_ref, io))
    vio = vae_io(reference_dir)
    for a, b in zip(vae_out(vae, vio), vae_out(vae_ref, vio)):
        assert torch.equal(a, b)

    # inside a diffusers pipeline folder the class (and its 8 heads) survives too
    DDIMPipeline(unet=unet, scheduler=DDIMScheduler()).save_pretrained(tmp_path / "pipe")
    piped = DDIMPipeline.from_pretrained(tmp_path / "pipe", local_files_only=True).unet
    assert type(piped) is LDMUNet2DModel and {m.heads for m in piped.modules() if isinstance(m, Attention)} == {8}

    with pytest.raises(FileExistsError, match="already exists"):
        convert_ldm_checkpoints(vae_path=reference_dir / "kl_f8_small.ckpt", out_dir=out)
    convert_ldm_checkpoints(vae_path=reference_dir / "kl_f8_small.ckpt", out_dir=out, overwrite=True,
                            vae_overrides={"scaling_factor": 0.5})
    assert AutoencoderKL.load_config(out / "vae")["scaling_factor"] == 0.5
    assert sorted(p.name for p in out.iterdir()) == ["unet", "vae"]


def test_whole_latent_diffusion_checkpoint_via_cli(reference_dir, tmp_path):
    """One LatentDiffusion-style file (UNet + first_stage_model + schedule buffers) converts through the CLI."""
    unet = {k: v for k, v in unet_sd(reference_dir).items()}
    vae = {f"first_stage_model.{k}": v for k, v in vae_sd(reference_dir).items() if not k.startswith("loss.")}
    buffers = {"betas": torch.linspace(1e-4, 2e-2, 10), "alphas_cumprod": torch.ones(10),
               "scale_factor": torch.tensor(0.22765929)}
    path = tmp_path / "ldm.ckpt"
    torch.save({"state_dict": {**unet, **vae, **buffers}, "global_step": 1}, path)

    assert main(["convert-ldm", "--unet", str(path), "--vae", str(path), "--out", str(tmp_path / "o")]) == 0
    assert AutoencoderKL.load_config(tmp_path / "o" / "vae")["scaling_factor"] == pytest.approx(0.22765929)
    # same weights as converting the separate reference files (whose outputs are checked above)
    assert_same_weights(load_converted_unet(tmp_path / "o" / "unet"), convert_ldm_unet(unet_sd(reference_dir)))
    assert_same_weights(AutoencoderKL.from_pretrained(tmp_path / "o" / "vae", local_files_only=True),
                        convert_kl_vae(vae_sd(reference_dir)), except_config=("scaling_factor",))
