"""TinyViT image encoder in the LiteMedSAM variant, inference only.

TinyViT (Wu et al., ECCV 2022; Microsoft, MIT licence) as adapted by MobileSAM and then LiteMedSAM (MedSAM's
LiteMedSAM branch, Apache-2.0), with SAM's neck on top. This is an independent, compact re-implementation whose
parameter names match the ``image_encoder.*`` entries of the LiteMedSAM checkpoint (prefix stripped) exactly, so
``load_state_dict(..., strict=True)`` works on them. Training-only machinery (drop-path, layer-wise lr decay,
gradient checkpointing, BN fusion) is left out.

Architecture for a 256x256 input with the default (LiteMedSAM) configuration:

============  =========================================================  =====  =========
stage         content                                                    dim    grid
============  =========================================================  =====  =========
patch_embed   1x1 conv-BN, GELU, 1x1 conv-BN (no downsampling)           64     256x256
stage0        2 MBConv blocks (inverted residual, depthwise 3x3)          64     256x256
stage1        merge (stride 2) + 2 attention blocks, window 7             128    128x128
stage2        merge (stride 2) + 6 attention blocks, window 14            160    64x64
stage3        merge (stride 1) + 2 attention blocks, window 7             320    64x64
neck          1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d                256    64x64
============  =========================================================  =====  =========

"stageK" is the output of stage K's blocks; the patch merge that starts stage K+1 is stored in the checkpoint
as ``layers.K.downsample`` (the reference's naming). Any input size works: windows are zero-padded at the
bottom/right as in the reference (the padded tokens enter the attention's LayerNorm and act as keys, exactly as
there), and the neck takes whatever grid stage3 has.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TinyViT", "LITE_MEDSAM_CONFIG"]

# TinyViT(img_size=256, in_chans=3, embed_dims=[64,128,160,320], depths=[2,2,6,2], num_heads=[2,4,5,10],
# window_sizes=[7,7,14,7], mlp_ratio=4, mbconv_expand_ratio=4, local_conv_size=3) as built by LiteMedSAM; the last
# patch merge keeps the resolution (the reference hard-codes stride 1 for 320/448/576-channel merges).
LITE_MEDSAM_CONFIG = dict(
    in_chans=3,
    embed_dims=(64, 128, 160, 320),
    depths=(2, 2, 6, 2),
    num_heads=(2, 4, 5, 10),
    window_sizes=(7, 7, 14, 7),
    merge_strides=(2, 2, 1),
    mlp_ratio=4.0,
    mbconv_expand_ratio=4.0,
    local_conv_size=3,
    neck_dim=256,
)


class ConvBN(nn.Sequential):
    """Bias-free conv followed by BatchNorm (kept unfused so checkpoint keys are ``c.*`` and ``bn.*``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


class PatchEmbed(nn.Module):
    """LiteMedSAM's stem: two pointwise conv-BN layers with a GELU between, at full input resolution."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        # index 1 is the (parameter-free) activation, so the checkpoint's keys are seq.0.* and seq.2.*
        self.seq = nn.Sequential(ConvBN(in_chans, dim // 2), nn.GELU(), ConvBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: expand 1x1, depthwise 3x3, project 1x1; GELU after the residual sum too."""

    def __init__(self, dim: int, expand_ratio: float):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """Channel change and (optional) 2x downsampling: 1x1, GELU, depthwise 3x3 with stride, GELU, 1x1."""

    def __init__(self, dim: int, out_dim: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x)


class WindowAttention(nn.Module):
    """Pre-norm multi-head self-attention inside one window, with a learned bias per head and per |dy|,|dx| offset.

    The fused ``qkv`` projection is laid out per head as [q, k, v] (key_dim each), as in TinyViT/LeViT.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        # Offset (|dy|, |dx|) of every token pair inside the window, numbered dy * window + dx.
        ys, xs = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        offsets = (ys[:, None] - ys[None]).abs() * window_size + (xs[:, None] - xs[None]).abs()
        self.register_buffer("bias_index", offsets, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (windows, tokens, dim)
        n, t, dim = x.shape
        qkv = self.qkv(self.norm(x)).view(n, t, self.num_heads, 3 * self.head_dim).transpose(1, 2)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        bias = self.attention_biases[:, self.bias_index].to(q.dtype)  # (heads, tokens, tokens)
        # Written out rather than F.scaled_dot_product_attention: with an additive mask that falls back to its
        # math path on CPU, which is ~12% slower here for the same result.
        attn = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1) + bias
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, t, dim))


class Mlp(nn.Module):
    """Pre-norm feed-forward: LayerNorm, Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (+ residual), depthwise local conv (no residual), MLP (+ residual); (B, H, W, C) in/out."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int):
        super().__init__()
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws = self.window_size
        pad_b, pad_r = -h % ws, -w % ws
        y = F.pad(x, (0, 0, 0, pad_r, 0, pad_b)) if pad_b or pad_r else x
        nh, nw = (h + pad_b) // ws, (w + pad_r) // ws
        y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        y = self.attn(y)
        y = y.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, nh * ws, nw * ws, c)[:, :h, :w]
        x = x + y
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks on (B, C, H, W), then the merge into stage 1 (``downsample``)."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class AttentionStage(nn.Module):
    """Stages 1..: TinyViT blocks, then the merge into the next stage (``downsample``), if any."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 local_conv_size: int, downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size)
                                    for _ in range(depth))
        self.downsample = downsample

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in and out
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        return x.permute(0, 3, 1, 2)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map (SAM's neck norm, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)  # static shape: ONNX-exportable
        return x.permute(0, 3, 1, 2)


class TinyViT(nn.Module):
    """TinyViT encoder + SAM neck. Default arguments give LiteMedSAM's image encoder.

    ``num_heads[0]`` and ``window_sizes[0]`` are unused (stage 0 is convolutional) but kept so the lists line up
    with the reference's; ``merge_strides[i]`` is the stride of the merge between stage i and stage i+1.
    Input: (B, in_chans, H, W) as LiteMedSAM expects it (RGB in [0, 1] resized to 256x256, no mean/std).
    """

    def __init__(self, in_chans: int = 3, embed_dims: Sequence[int] = (64, 128, 160, 320),
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (2, 4, 5, 10),
                 window_sizes: Sequence[int] = (7, 7, 14, 7), merge_strides: Sequence[int] = (2, 2, 1),
                 mlp_ratio: float = 4.0, mbconv_expand_ratio: float = 4.0, local_conv_size: int = 3,
                 neck_dim: int = 256):
        super().__init__()
        n = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(window_sizes) == n >= 2) or len(merge_strides) != n - 1:
            raise ValueError("embed_dims, depths, num_heads and window_sizes need one entry per stage (at least 2) "
                             "and merge_strides one fewer")
        self.embed_dims = tuple(int(d) for d in embed_dims)
        self.neck_dim = int(neck_dim)
        # Stride of each stage's output relative to the input, and of the neck (= last stage's).
        strides = [1]
        for s in merge_strides:
            strides.append(strides[-1] * int(s))
        self.stage_strides = tuple(strides)

        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        for i in range(n):
            merge = (PatchMerging(embed_dims[i], embed_dims[i + 1], int(merge_strides[i])) if i < n - 1 else None)
            if i == 0:
                stage = ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, merge)
            else:
                stage = AttentionStage(embed_dims[i], depths[i], num_heads[i], window_sizes[i], mlp_ratio,
                                       local_conv_size, merge)
            self.layers.append(stage)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], neck_dim, 1, bias=False),
            LayerNorm2d(neck_dim),
            nn.Conv2d(neck_dim, neck_dim, 3, padding=1, bias=False),
            LayerNorm2d(neck_dim),
        )

    @property
    def num_stages(self) -> int:
        return len(self.layers)

    def forward_stages(self, x: torch.Tensor, num_stages: int | None = None) -> list[torch.Tensor]:
        """Per-stage feature maps [(B, embed_dims[i], H / stage_strides[i], W / stage_strides[i]), ...].

        Each is the output of that stage's blocks (before the merge into the next stage). ``num_stages`` stops
        early after that many stages (all by default), skipping the rest of the network.
        """
        num_stages = self.num_stages if num_stages is None else int(num_stages)
        if not 1 <= num_stages <= self.num_stages:
            raise ValueError(f"num_stages must be in 1..{self.num_stages}, got {num_stages}")
        x = self.patch_embed(x)
        stages = []
        for i in range(num_stages):
            layer = self.layers[i]
            if i > 0:
                x = self.layers[i - 1].downsample(x)
            x = layer.run_blocks(x)
            stages.append(x)
        return stages

    def forward(self, x: torch.Tensor, return_stages: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Neck output (B, neck_dim, H / 4, W / 4) -- (B, 256, 64, 64) for a 256x256 input.

        With ``return_stages=True`` returns ``(neck, stages)``, ``stages`` as in :meth:`forward_stages`.
        """
        stages = self.forward_stages(x)
        out = self.neck(stages[-1])
        return (out, stages) if return_stages else out
