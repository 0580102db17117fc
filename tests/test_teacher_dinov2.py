"""DINOv2 teacher (transformers, offline from a local folder) on tiny random Dinov2 / Dinov2WithRegisters models.

The reference for the tokens is a hand computation with the transformers model itself: bicubic (antialias) resize to
patch * grid, ImageNet mean/std, ``last_hidden_state[:, 1 + n_registers:]``. Tests that need transformers skip without
it, except under CI, where they fail (the project's install provides it: pip install 'leafseg[dinov2]').
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leafseg.models.teachers import (DINOv2Teacher, Teacher, build_teacher, resample_position_embeddings,
                                    resample_to_grid)

HIDDEN, LAYERS, REGISTERS = 32, 2, 4
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
KINDS = ("dinov2", "dinov2_with_registers")


@pytest.fixture(scope="module")
def transformers():
    try:
        import transformers
    except ImportError as err:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"transformers is not importable ({err}); CI=true: the DINOv2 teacher tests must run")
        pytest.skip(f"transformers is not importable ({err}); pip install 'leafseg[dinov2]'")
    return transformers


def _save_model(transformers, folder, kind, image_size=56, seed=0):
    kwargs = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2, intermediate_size=64,
                  patch_size=14, image_size=image_size)
    torch.manual_seed(seed)
    if kind == "dinov2":
        model = transformers.Dinov2Model(transformers.Dinov2Config(**kwargs))
    else:
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=REGISTERS, **kwargs))
    with torch.no_grad():  # random init gives a near-zero position embedding; make it matter
        model.embeddings.position_embeddings.normal_()
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(transformers, tmp_path_factory):
    """kind -> folder of a tiny model whose position embeddings are 4 x 4 (image_size 56 = 14 * 4)."""
    root = tmp_path_factory.mktemp("dinov2")
    return {kind: _save_model(transformers, root / kind, kind) for kind in KINDS}


@pytest.fixture(scope="module")
def small_pos_folders(transformers, tmp_path_factory):
    """kind -> folder of a tiny model with 2 x 2 position embeddings (image_size 28)."""
    root = tmp_path_factory.mktemp("dinov2-28")
    return {kind: _save_model(transformers, root / kind, kind, image_size=28) for kind in KINDS}


def _load(transformers, folder, kind):
    cls = transformers.Dinov2Model if kind == "dinov2" else transformers.Dinov2WithRegistersModel
    return cls.from_pretrained(folder, local_files_only=True).float().eval()


def _pixel_values(images, size):
    x = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return (x - MEAN) / STD


def _rand(*shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _to_map(tokens, grid):  # (B, g*g, D) -> (B, D, g, g)
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid)


@pytest.mark.parametrize("kind", KINDS)
def test_build_and_token_shapes(folders, kind):
    teacher = build_teacher("dinov2", checkpoint=folders[kind], image_size=56)
    assert isinstance(teacher, DINOv2Teacher) and isinstance(teacher, Teacher)
    assert teacher.model_type == kind and type(teacher.model).__name__ == {
        "dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel"}[kind]
    assert (teacher.native_grid, teacher.feature_dim, teacher.image_size) == (4, HIDDEN, 56)
    assert teacher.num_register_tokens == (REGISTERS if kind != "dinov2" else 0)
    images = _rand(2, 3, 40, 52, seed=1)
    for grid in (1, 2, 3, 4, 7, 8):
        tokens = teacher(images, grid)
        assert tokens.shape == (2, grid * grid, HIDDEN) and tokens.dtype == torch.float32


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_match_hand_computation(transformers, folders, kind):
    teacher = build_teacher("dinov2", checkpoint=folders[kind], image_size=56)
    model = _load(transformers, folders[kind], kind)
    images = _rand(3, 3, 80, 64, seed=2)
    with torch.no_grad():
        out = model(pixel_values=_pixel_values(images, 56))
    n_prefix = 1 + (REGISTERS if kind != "dinov2" else 0)
    expected = out.last_hidden_state[:, n_prefix:]
    assert expected.shape == (3, 16, HIDDEN)
    torch.testing.assert_close(teacher(images, 4), expected, atol=1e-5, rtol=0)
    # resampled outputs are the existing resample_to_grid of the native map
    for grid in (2, 8):
        want = resample_to_grid(_to_map(expected, 4), grid).flatten(2).transpose(1, 2)
        torch.testing.assert_close(teacher(images, grid), want, atol=1e-5, rtol=0)
    # input already at 56 x 56: no resize
    square = _rand(2, 3, 56, 56, seed=3)
    with torch.no_grad():
        expected = model(pixel_values=(square - MEAN) / STD).last_hidden_state[:, n_prefix:]
    torch.testing.assert_close(teacher(square, 4), expected, atol=1e-5, rtol=0)


def test_registers_are_stripped(transformers, folders):
    images = _rand(2, 3, 56, 56, seed=4)
    raw = {}
    for kind in KINDS:
        with torch.no_grad():
            raw[kind] = _load(transformers, folders[kind], kind)(pixel_values=(images - MEAN) / STD)
    # before stripping: CLS + 16 patches, and CLS + 4 registers + 16 patches
    assert raw["dinov2"].last_hidden_state.shape[1] == 1 + 16
    assert raw["dinov2_with_registers"].last_hidden_state.shape[1] == 1 + REGISTERS + 16
    teacher = build_teacher("dinov2", path=folders["dinov2_with_registers"], grid=4)
    tokens = teacher(images, 4)
    assert tokens.shape == (2, 16, HIDDEN)
    full = raw["dinov2_with_registers"].last_hidden_state
    torch.testing.assert_close(tokens, full[:, 1 + REGISTERS:], atol=1e-5, rtol=0)
    # none of the kept tokens is the CLS or a register token
    for prefix in range(1 + REGISTERS):
        assert (tokens - full[:, prefix:prefix + 1]).abs().amax(-1).min() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_intermediate_layers(transformers, folders, kind):
    model = _load(transformers, folders[kind], kind)
    images = _rand(2, 3, 56, 56, seed=5)
    with torch.no_grad():
        out = model(pixel_values=(images - MEAN) / STD, output_hidden_states=True)
    n_prefix = 1 + (REGISTERS if kind != "dinov2" else 0)
    names = set()
    for layer in ("0", "1", 2, "-1"):
        teacher = DINOv2Teacher(folders[kind], grid=4, layer=layer)
        index = int(layer) % (LAYERS + 1)
        assert teacher.layer == str(index)
        torch.testing.assert_close(teacher(images, 4), out.hidden_states[index][:, n_prefix:], atol=1e-5, rtol=0)
        names.add(teacher.name)
    assert len(names) == 3  # "-1" is "2"
    # "last" is after the final layernorm, hidden_states[-1] before it
    last = DINOv2Teacher(folders[kind], grid=4)
    assert last.layer == "last" and last.name not in names
    assert not torch.allclose(last(images, 4), out.hidden_states[-1][:, n_prefix:], atol=1e-3)
    for bad in ("neck", "3", "-4", "1.5", 1.5, True):
        with pytest.raises(ValueError, match="'last' or a block index 0..2"):
            DINOv2Teacher(folders[kind], grid=4, layer=bad)


def test_position_embedding_resampling(transformers, small_pos_folders):
    """Position embeddings 2 x 2 -> 4 x 4. Reference: timm resample_abs_pos_embed (bicubic, antialias)."""
    images = _rand(2, 3, 56, 56, seed=6)
    pixels = (images - MEAN) / STD
    # with registers: transformers' own interpolate_pos_encoding is the reference's resampling
    reg = _load(transformers, small_pos_folders["dinov2_with_registers"], "dinov2_with_registers")
    teacher = DINOv2Teacher(small_pos_folders["dinov2_with_registers"], grid=4)
    assert teacher.model.embeddings.position_embeddings.shape == (1, 1 + 16, HIDDEN)
    with torch.no_grad():
        expected = reg(pixel_values=pixels).last_hidden_state[:, 1 + REGISTERS:]
    torch.testing.assert_close(teacher(images, 4), expected, atol=1e-5, rtol=0)
    # plain Dinov2: transformers interpolates without antialias; the teacher pre-resamples as the reference does
    plain = _load(transformers, small_pos_folders["dinov2"], "dinov2")
    teacher = DINOv2Teacher(small_pos_folders["dinov2"], grid=4)
    with torch.no_grad():
        transformers_own = plain(pixel_values=pixels).last_hidden_state[:, 1:]
        pos = plain.embeddings.position_embeddings
        patch = pos[:, 1:].reshape(1, 2, 2, HIDDEN).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(4, 4), mode="bicubic", align_corners=False, antialias=True)
        plain.embeddings.position_embeddings = nn.Parameter(
            torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, 16, HIDDEN)], dim=1))
        expected = plain(pixel_values=pixels).last_hidden_state[:, 1:]
    tokens = teacher(images, 4)
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=0)
    assert (tokens - transformers_own).abs().max() > 1e-3
    # resample_position_embeddings: identity at the same grid, prefix rows kept
    assert resample_position_embeddings(pos, 2) is pos
    assert torch.equal(resample_position_embeddings(pos, 4)[:, :1], pos[:, :1])


def test_paper_geometry_matches_transformers(transformers, tmp_path):
    """ViT-*/14 with registers pretrained at 518 (37 x 37 positions), run at 224 (16 x 16): the teacher's one-off
    resampling equals transformers' per-forward interpolate_pos_encoding (bicubic, antialias: a downsampling)."""
    folder = _save_model(transformers, tmp_path / "reg518", "dinov2_with_registers", image_size=518)
    teacher = build_teacher("dinov2", checkpoint=folder, layer="last", image_size=224)
    assert teacher.model.embeddings.position_embeddings.shape == (1, 1 + 256, HIDDEN)
    images = _rand(2, 3, 256, 256, seed=8)
    with torch.no_grad():
        out = _load(transformers, folder, "dinov2_with_registers")(pixel_values=_pixel_values(images, 224))
    assert out.last_hidden_state.shape == (2, 1 + REGISTERS + 256, HIDDEN)
    torch.testing.assert_close(teacher(images, 16), out.last_hidden_state[:, 1 + REGISTERS:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_eval_and_deterministic(folders, kind):
    teacher = DINOv2Teacher(folders[kind], grid=4)
    assert not any(p.requires_grad for p in teacher.parameters())
    parent = nn.Sequential(nn.Linear(2, 2), teacher)
    parent.train()
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    images = _rand(2, 3, 64, 64, seed=7).requires_grad_(True)
    a, b = teacher(images, 4), teacher(images, 4)
    assert torch.equal(a, b) and not a.requires_grad
    # a fresh load gives identical tokens and the same name
    again = DINOv2Teacher(folders[kind], grid=4)
    assert torch.equal(again(images, 4), a) and again.name == teacher.name


def test_name_is_a_cache_key(transformers, folders, tmp_path):
    teacher = build_teacher("dinov2", checkpoint=folders["dinov2_with_registers"], image_size=224)
    assert teacher.native_grid == 16 and teacher.image_size == 224
    assert teacher.name.startswith("dinov2:last@16:") and len(teacher.name.rsplit(":", 1)[1]) == 12
    # the hash follows the files' content, not their location
    copy = shutil.copytree(folders["dinov2_with_registers"], tmp_path / "copy")
    assert DINOv2Teacher(copy, grid=16).name == teacher.name
    other = _save_model(transformers, tmp_path / "other", "dinov2_with_registers", seed=1)
    assert DINOv2Teacher(other, grid=16).name != teacher.name
    assert DINOv2Teacher(folders["dinov2"], grid=16).name != teacher.name
    assert DINOv2Teacher(copy, grid=8).name != teacher.name
    assert DINOv2Teacher(copy, grid=16, antialias=False).name == teacher.name.replace("@16:", "@16-noaa:")


def test_image_size_maps_to_grid(folders):
    folder = folders["dinov2"]
    assert build_teacher("dinov2", path=folder, grid=16).native_grid == 16
    assert build_teacher("dinov2", checkpoint=folder, layer="last", image_size=112).native_grid == 8
    with pytest.warns(UserWarning, match="not a multiple of the patch size 14; using 252"):
        teacher = build_teacher("dinov2", checkpoint=folder, layer="last", image_size=256)
    assert (teacher.native_grid, teacher.image_size) == (18, 252)
    assert DINOv2Teacher(folder, grid=8, image_size=112).native_grid == 8
    with pytest.raises(ValueError, match="disagree"):
        DINOv2Teacher(folder, grid=8, image_size=224)
    with pytest.raises(ValueError, match="disagree"):
        DINOv2Teacher(path=folder, checkpoint=folder.parent)
    with pytest.raises(ValueError, match="at least the patch size"):
        DINOv2Teacher(folder, image_size=10)


def test_missing_folder_and_config_name_the_path(tmp_path):
    missing = tmp_path / "no-such-dinov2"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_teacher("dinov2", checkpoint=missing, image_size=224)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{empty}.*config.json"):
        DINOv2Teacher(empty)
    with pytest.raises(ValueError, match="align.teacher_checkpoint"):
        build_teacher("dinov2", checkpoint=None, layer="last", image_size=224)


def test_unsupported_model_type(tmp_path):
    folder = tmp_path / "vit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    with pytest.raises(ValueError, match=r"unsupported model_type 'vit'.*'dinov2', 'dinov2_with_registers'"):
        DINOv2Teacher(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        DINOv2Teacher(folder)


def test_missing_weights(transformers, folders, tmp_path):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    shutil.copy(folders["dinov2"] / "config.json", folder)
    with pytest.raises(FileNotFoundError, match=f"{folder}.*no weights"):
        DINOv2Teacher(folder)
    from safetensors.torch import load_file, save_file
    state = load_file(folders["dinov2"] / "model.safetensors")
    del state["layernorm.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing keys layernorm.weight"):
        DINOv2Teacher(folder)


def test_missing_transformers_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "dinov2_with_registers"}))
    (tmp_path / "model.safetensors").write_bytes(b"")  # never read: transformers is imported first
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'leafseg\[dinov2\]'"):
        DINOv2Teacher(tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_cache_path_gives_the_torch_features(folders, kind):
    """run.cache_backend=onnx on a DINOv2 teacher: exported (or, if the exporter cannot trace it, computed by torch,
    said on screen); the features are the torch ones either way."""
    pytest.importorskip("onnxruntime")
    from leafseg.training.caches import TeacherFeatures, frozen_function

    teacher = build_teacher("dinov2", checkpoint=folders[kind], image_size=56)
    images = _rand(3, 3, 64, 64, seed=2)
    features = frozen_function(TeacherFeatures(teacher), torch.zeros(1, 3, 64, 64), "onnx")
    torch.testing.assert_close(features(images), teacher.features(images), rtol=1e-4, atol=1e-4)
