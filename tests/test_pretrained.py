"""Pretrained components from disk: diffusers autoencoder folders (KL and Tiny), converted LDM UNets, configs."""

import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from leafseg.config import load_config
from leafseg.conversion import convert_ldm_unet, load_checkpoint
from leafseg.models import autoencoder as ae_ops
from leafseg.models.denoiser import load_pretrained_unet
from leafseg.models.image_encoder import ImageEncoder
from tiny import TINY_AE

TINY_TAESD = {"encoder_block_out_channels": (8, 8, 8, 8), "decoder_block_out_channels": (8, 8, 8, 8),
              "num_encoder_blocks": (1, 1, 1, 1), "num_decoder_blocks": (1, 1, 1, 1), "latent_channels": 4}


@pytest.mark.parametrize("cls,config", [(AutoencoderKL, TINY_AE), (AutoencoderTiny, TINY_TAESD)])
def test_diffusers_autoencoder_folder_and_its_image_encoder(tmp_path, cls, config):
    torch.manual_seed(0)
    cls(**config).save_pretrained(tmp_path / "vae")
    ae = ae_ops.load_autoencoder("diffusers", tmp_path / "vae", scaling_factor=0.5)
    assert type(ae) is cls and ae_ops.latent_scale(ae) == 0.5 and ae_ops.downscale_factor(ae) == 8
    assert not any(p.requires_grad for p in ae.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = ae_ops.encode(ae, x)
        assert z.shape == (2, 4, 4, 4)
        out = ae_ops.decode(ae, z)
        assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
        enc = ImageEncoder.from_autoencoder(ae).eval()
        torch.testing.assert_close(enc(x), z)
    enc.save_pretrained(tmp_path / "enc")  # a config from a loaded model must stay serialisable
    again = ImageEncoder.from_pretrained(tmp_path / "enc", local_files_only=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), z)


def test_autoencoder_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ae_ops.load_autoencoder("diffusers", tmp_path / "nothing")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"_class_name": "VQModel"}')
    with pytest.raises(ValueError, match="VQModel"):
        ae_ops.load_autoencoder("diffusers", tmp_path / "odd")
    with pytest.raises(ValueError, match="kind"):
        ae_ops.load_autoencoder("vqgan", tmp_path)


def test_training_starts_from_a_converted_ldm_unet(tmp_path, reference_dir):
    unet = convert_ldm_unet(load_checkpoint(reference_dir / "ldm_unet_small.ckpt")).eval()
    unet.save_pretrained(tmp_path / "unet")
    c, size = unet.config.in_channels, unet.config.sample_size
    wide = load_pretrained_unet(tmp_path / "unet", latent_channels=c, sample_size=size).eval()
    assert type(wide) is type(unet) and wide.config.in_channels == 2 * c
    z, t = torch.randn(1, c, size, size), torch.tensor([500])
    with torch.no_grad():
        torch.testing.assert_close(wide(torch.cat([z, z], 1), t).sample, unet(z, t).sample, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="latent"):
        load_pretrained_unet(tmp_path / "unet", latent_channels=c + 1)


def test_packaged_configs_resolve(monkeypatch):
    monkeypatch.setenv("LEAFSEG_PRETRAINED", "/models")
    paper = load_config("paper", ["data.root=x"])
    assert (paper.train.lr, paper.train.warmup_steps, paper.train.max_steps, paper.train.batch_size) == \
        (4e-5, 10000, 100000, 4)
    assert paper.align.weight == 0.75 and paper.align.teacher == "dinov2" and paper.data.resolution == 256
    assert paper.autoencoder.path == "/models/ldm/vae"
    small = load_config("cpu-small", ["data.root=x"])
    assert small.autoencoder.kind == "taef2" and small.align.teacher == "lite_medsam"
