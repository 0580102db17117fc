"""CompVis/LDM checkpoints -> diffusers ``UNet2DModel`` / ``AutoencoderKL``, offline and exact.

LEAF starts from the CompVis LDM kl-f8 autoencoder and the LDM LSUN-Churches-256 UNet (``openaimodel.UNetModel``
with scale-shift norm, resnet up/down-sampling, legacy attention heads). No CompVis code is used: this module is a
key/weight mapping onto stock diffusers blocks, derived from tensor names and shapes only, so it can be checked on a
list of names and shapes (``meta`` tensors) as well as run on real weights.

Semantics that have to match (all checked numerically against reference outputs of the original code):

* timestep embedding: LDM ``timestep_embedding`` is ``cat[cos, sin]`` with frequencies ``exp(-ln(1e4) i / half)``:
  diffusers ``Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)``;
* ``ResBlock`` with ``use_scale_shift_norm``: ``norm2(h) * (1 + scale) + shift`` with ``scale, shift = chunk(emb)``:
  ``ResnetBlock2D(time_embedding_norm="scale_shift")``; ``resblock_updown``: a ``ResBlock(down=True)`` /
  ``(up=True)`` (avg-pool / nearest, applied after norm+SiLU and to the skip path) is diffusers' ``down=True`` /
  ``up=True`` resnet (``downsample_type="resnet"``, ``ResnetDownsampleBlock2D`` for levels without attention);
* ``AttentionBlock`` (GroupNorm, conv1d ``qkv``, ``QKVAttentionLegacy``, conv1d ``proj_out``, residual): the fused
  ``qkv`` rows are laid out per head as ``(heads, 3, head_dim)``, so q/k/v are split per head, not in thirds
  (``use_new_attention_order=True`` checkpoints are ``(3, heads, head_dim)``: split in thirds). LDM's ``num_heads``
  is a fixed head *count* at every level (``num_head_channels=-1``), while ``UNet2DModel`` only has one global
  ``attention_head_dim``; when the count gives different head sizes per level (it does for LSUN-Churches:
  192/384/768 channels with 8 heads) the model is a :class:`LDMUNet2DModel`, a ``UNet2DModel`` whose one extra config
  entry ``num_attention_heads`` sets the head count of every attention layer (so it survives save/load);
* the middle block's attention has a GroupNorm: ``attn_norm_num_groups=32`` (diffusers drops it by default for
  ``scale_shift``); GroupNorm eps 1e-5 (UNet) / 1e-6 (VAE), 32 groups.

Keys that are not part of the converted network and are skipped on purpose: ``loss.*`` (autoencoder training loss:
discriminator, LPIPS, logvar), ``model_ema.*`` when converting the raw weights (``model.diffusion_model.*`` when
converting the EMA ones; ``model_ema.decay``/``num_updates`` always), the diffusion schedule buffers of
``LatentDiffusion`` (``betas``, ``alphas_cumprod``..., ``logvar``, ``scale_factor``) and the other components of a
whole ``LatentDiffusion`` checkpoint (``first_stage_model.*``/``cond_stage_model.*`` for the UNet, everything outside
``first_stage_model.`` for the VAE). Any other key that is not mapped is an error.
"""

from .checkpoint import CHECKPOINT_SUFFIXES, UnsafeCheckpointError, load_checkpoint
from .folders import convert_ldm_checkpoints
from .kl_vae import LDM_VAE_SCALING_FACTOR, check_kl_vae_mapping, convert_kl_vae, kl_vae_config_from_state_dict
from .ldm_unet import check_ldm_unet_mapping, convert_ldm_unet, ldm_unet_config_from_state_dict

__all__ = [
    "CHECKPOINT_SUFFIXES", "LDM_VAE_SCALING_FACTOR", "UnsafeCheckpointError", "check_kl_vae_mapping",
    "check_ldm_unet_mapping", "convert_kl_vae", "convert_ldm_checkpoints", "convert_ldm_unet",
    "kl_vae_config_from_state_dict", "ldm_unet_config_from_state_dict", "load_checkpoint",
]
