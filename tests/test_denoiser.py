import pytest
import torch
from diffusers import UNet2DModel

from leafseg.models.denoiser import DownBlockFeatures, build_unet, down_block_grids, widen_input_conv


def tiny_unet(in_channels=4, out_channels=4):
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=in_channels, out_channels=out_channels,
                       block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       attention_head_dim=8)


def test_widened_unet_on_zz_equals_original_on_z():
    unet = tiny_unet().eval()
    z = torch.randn(2, 4, 8, 8)
    t = torch.tensor([3, 999])
    with torch.no_grad():
        before = unet(z, t).sample
        old_weight = unet.conv_in.weight.clone()
        wide = widen_input_conv(unet)
        after = wide(torch.cat([z, z], dim=1), t).sample
    assert wide.config.in_channels == 8 and wide.conv_in.weight.shape[1] == 8
    torch.testing.assert_close(wide.conv_in.weight[:, :4], old_weight * 0.5)
    torch.testing.assert_close(wide.conv_in.weight[:, 4:], old_weight * 0.5)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_build_unet_channels_and_grids():
    unet = build_unet(latent_channels=4, sample_size=16, block_out_channels=(16, 32, 32), norm_num_groups=8,
                      attention_head_dim=8)
    assert unet.config.in_channels == 8 and unet.config.out_channels == 4
    assert down_block_grids(unet, 16) == [8, 4, 4]
    out = unet(torch.randn(1, 8, 16, 16), torch.tensor([5])).sample
    assert out.shape == (1, 4, 16, 16)


def test_down_block_features_capture_first_downsampling_output():
    unet = build_unet(latent_channels=4, sample_size=16, block_out_channels=(16, 32, 32), norm_num_groups=8,
                      attention_head_dim=8)
    with DownBlockFeatures(unet, 0) as f:
        unet(torch.randn(2, 8, 16, 16), torch.tensor([1, 2]))
    assert f.value.shape == (2, 16, 8, 8)
    assert not unet.down_blocks[0]._forward_hooks  # hook removed afterwards
    with pytest.raises(ValueError, match="out of range"):
        DownBlockFeatures(unet, 5)
