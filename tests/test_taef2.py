"""TAEF2: strict loading of the real weights, real CVC round trips, diffusers save/load, error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from leafseg.models.taef2 import TAEF2, build_taef2_encoder

ENCODER_PARAMS, DECODER_PARAMS = 1_338_528, 1_338_499  # the published checkpoints' sizes
SAMPLES = (1, 100, 300)


def _load_taef2(taef2_dir) -> TAEF2:
    return TAEF2.from_taesd_weights(taef2_dir / "taef2_encoder.pth", taef2_dir / "taef2_decoder.pth")


def _cvc(cvc_dir, kind: str, size: int = 256) -> torch.Tensor:
    """CVC images (RGB) or masks (L, binarised) for SAMPLES, bilinear-resized to size², in [0, 1]."""
    mode = "RGB" if kind == "images" else "L"
    arrays = [np.array(Image.open(cvc_dir / kind / f"{i}.png").convert(mode)) for i in SAMPLES]
    x = torch.from_numpy(np.stack(arrays)).float() / 255
    x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return (x > 0.5).float() if kind == "masks" else x


def _save_state(module: torch.nn.Module, path, edit=None):
    state = {k: v.half() for k, v in module.state_dict().items()}  # fp16, like the published files
    if edit is not None:
        edit(state)
    torch.save(state, path)
    return path


def test_random_init_shapes_and_sizes():
    torch.manual_seed(0)
    ae = TAEF2().eval()
    assert sum(p.numel() for p in ae.encoder.parameters()) == ENCODER_PARAMS
    assert sum(p.numel() for p in ae.decoder.parameters()) == DECODER_PARAMS
    x = torch.rand(2, 3, 64, 48)
    with torch.no_grad():
        z = ae.encode(x)
        y = ae.decode(z)
    assert z.shape == (2, 32, 8, 6)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert build_taef2_encoder(16)(x).shape == (2, 16, 8, 6)
    assert ae.config.scaling_factor == 1.0


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    ae = TAEF2(scaling_factor=1.5).eval()
    ae.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = TAEF2.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.config.scaling_factor == 1.5 and loaded.config.latent_channels == 32
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        z = ae.encode(x)
        assert torch.equal(loaded.encode(x), z)
        assert torch.equal(loaded.decode(z), ae.decode(z))


def test_missing_file_names_the_path(tmp_path):
    encoder = _save_state(TAEF2().encoder, tmp_path / "enc.pth")
    with pytest.raises(FileNotFoundError, match="nowhere_encoder.pth"):
        TAEF2.from_taesd_weights(tmp_path / "nowhere_encoder.pth", encoder)
    with pytest.raises(FileNotFoundError, match="nowhere_decoder.pth"):
        TAEF2.from_taesd_weights(encoder, tmp_path / "nowhere_decoder.pth")


@pytest.mark.parametrize(("half", "edit", "named"), [
    pytest.param("encoder", lambda s: s.pop("12.pool.1.bias"), "12.pool.1.bias", id="missing-key"),
    pytest.param("encoder", lambda s: s.update({"14.weight": torch.zeros(16, 64, 3, 3)}), "14.weight",
                 id="wrong-shape"),
    pytest.param("decoder", lambda s: s.update({"3.pool.9.weight": torch.zeros(1)}), "3.pool.9.weight", id="extra-key"),
])
def test_corrupted_state_dict_names_file_and_key(tmp_path, half, edit, named):
    ae = TAEF2()
    encoder = _save_state(ae.encoder, tmp_path / "enc.pth", edit if half == "encoder" else None)
    decoder = _save_state(ae.decoder, tmp_path / "dec.pth", edit if half == "decoder" else None)
    with pytest.raises(ValueError, match=named) as info:
        TAEF2.from_taesd_weights(encoder, decoder)
    assert str(tmp_path / ("enc.pth" if half == "encoder" else "dec.pth")) in str(info.value)


def test_strict_load_of_published_weights(taef2_dir):
    ae = _load_taef2(taef2_dir)
    published = {f"{half}.{k}": v for half in ("encoder", "decoder")
                 for k, v in torch.load(taef2_dir / f"taef2_{half}.pth", weights_only=True, map_location="cpu").items()}
    state = ae.state_dict()
    assert state.keys() == published.keys()
    assert all(v.dtype == torch.float32 and torch.equal(v, published[k].float()) for k, v in state.items())
    assert sum(p.numel() for p in ae.encoder.parameters()) == ENCODER_PARAMS
    assert sum(p.numel() for p in ae.decoder.parameters()) == DECODER_PARAMS


def test_mask_round_trip_dice(taef2_dir, cvc_dir):
    ae = _load_taef2(taef2_dir)
    masks = _cvc(cvc_dir, "masks")
    with torch.no_grad():
        decoded = ae.decode(ae.encode(masks.expand(-1, 3, -1, -1)))
    pred = (decoded.mean(1, keepdim=True) > 0.5).float()
    dice = 2 * (pred * masks).sum((1, 2, 3)) / (pred.sum((1, 2, 3)) + masks.sum((1, 2, 3)))
    assert dice.min() > 0.99, dice


def test_image_round_trip_psnr_and_latent_shape(taef2_dir, cvc_dir):
    ae = _load_taef2(taef2_dir)
    images = _cvc(cvc_dir, "images")
    with torch.no_grad():
        z = ae.encode(images)
        decoded = ae.decode(z)
    assert z.shape == (len(SAMPLES), 32, 32, 32)
    assert 0.6 < z.std() < 1.0  # raw latents, std about 0.8 on CVC images
    psnr = -10 * torch.log10(((decoded - images) ** 2).mean((1, 2, 3)))
    # Right architecture: 35.7/35.0/34.9 dB (36.9 dB mean over CVC). The nearest wrong reading of `pool` (branch
    # added to the block output instead of its input) gives 34.1/33.0/33.9, hence the mean bound.
    assert psnr.min() > 33 and psnr.mean() > 34.5, psnr


def test_latent_shape_at_native_resolution(taef2_dir, cvc_dir):
    ae = _load_taef2(taef2_dir)
    image = torch.from_numpy(np.array(Image.open(cvc_dir / "images" / "1.png").convert("RGB"))).float() / 255
    with torch.no_grad():
        z = ae.encode(image.permute(2, 0, 1)[None])
    assert z.shape == (1, 32, 288 // 8, 384 // 8)
