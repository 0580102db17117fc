"""The streaming data path: samples decoded once into row files on disk, read lazily by a step sampler and a
DataLoader (with or without workers), augmentation seeded by (seed, step, rank), frozen targets streamed to disk.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from leafseg import data as D
from leafseg.data import store as S
from leafseg.data.loader import StepSampler, TrainSamples, train_loader
from leafseg.training import train
from tiny import BITWISE, saved_weights, tiny_config

needs_kornia = pytest.mark.skipif(importlib.util.find_spec("kornia") is None,
                                  reason="kornia not installed (pip install 'leafseg[augment]')")
AUGMENT = ["data.augment.p=0.8", "data.augment.crop_scale=[0.5,1.0]", "data.augment.rotate=20",
           "data.augment.gamma=[0.7,1.5]", "data.augment.noise=0.02"]


def test_row_file_round_trip_and_errors(tmp_path):
    rows = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    with S.RowWriter(tmp_path / "x", np.float32, (2, 3)) as writer:
        writer.write(rows[:2])
        writer.write(rows[2:])
    f = S.RowFile(tmp_path / "x")
    assert len(f) == 5 and f.row_shape == (2, 3)
    np.testing.assert_array_equal(f.read([4, 0, 4]), rows[[4, 0, 4]])
    np.testing.assert_array_equal(f.read(3), rows[3])
    np.testing.assert_array_equal(f.read_range(1, 9), rows[1:])
    with pytest.raises(IndexError, match="out of range"):
        f.read([5])
    with pytest.raises(ValueError, match=r"rows of shape \(3,\), expected \(2, 3\)"):
        S.RowWriter(tmp_path / "y", np.float32, (2, 3)).write(np.zeros((1, 3)))
    (tmp_path / "x.bin").write_bytes((tmp_path / "x.bin").read_bytes()[:-4])  # a truncated file is named
    with pytest.raises(ValueError, match=r"x\.bin: 116 bytes, expected 5 rows of 24"):
        S.RowFile(tmp_path / "x")


def test_sample_store_holds_what_load_samples_reads_and_decodes_once(tmp_path, synthetic, monkeypatch):
    pairs = D.find_dataset(synthetic, "folder", "images", "masks")[:7]
    images, masks, names = D.load_samples(pairs, 16)
    calls = []
    real = S._samples
    monkeypatch.setattr(S, "_samples", lambda *a: calls.append(a[0]) or real(*a))
    store = S.build_sample_store(pairs, 16, tmp_path / "store")
    assert len(calls) == 7 and store.names == names and len(store) == 7
    got_images, got_masks = store.read(range(7))
    assert torch.equal(torch.from_numpy(got_images), images) and torch.equal(torch.from_numpy(got_masks), masks)
    assert store.foreground == [int(m.sum()) for m in masks]
    again = S.build_sample_store(pairs, 16, tmp_path / "store")  # opened, not decoded again
    assert len(calls) == 7 and again.names == names
    batches = list(store.batches(3))
    assert [len(b[0]) for b in batches] == [3, 3, 1] and torch.equal(torch.cat([b[1] for b in batches]), masks)


def test_an_interrupted_store_build_leaves_nothing(tmp_path, synthetic, monkeypatch):
    pairs = D.find_dataset(synthetic, "folder", "images", "masks")[:4]
    real, seen = S._samples, []

    def failing(*a):
        seen.append(1)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(S, "_samples", failing)
    with pytest.raises(KeyboardInterrupt):
        S.build_sample_store(pairs, 16, tmp_path / "store")
    assert list(tmp_path.iterdir()) == []


def test_store_key_changes_with_an_edited_file(tmp_path, synthetic):
    import shutil

    shutil.copytree(synthetic, tmp_path / "d")
    pairs = D.find_dataset(tmp_path / "d", "folder", "images", "masks")
    key = S.store_key(pairs, 32, {})
    assert key == S.store_key(pairs, 32, {}) and key != S.store_key(pairs, 64, {})
    pairs[0].mask.write_bytes(pairs[0].mask.read_bytes())
    os.utime(pairs[0].mask, ns=(1, 1))
    assert S.store_key(pairs, 32, {}) != key


def _loader_batches(store, workers, augmentation, start=0, steps=4):
    codes = [(False, False), (True, False), (False, True), (True, True)]
    samples = TrainSamples(store, codes, augmentation, seed=3, rank=0)
    sampler = StepSampler(len(store), 3, world=1, rank=0, seed=3, n_codes=4, start_step=start)
    it = iter(train_loader(samples, sampler, workers))
    return [next(it) for _ in range(steps)]


@needs_kornia
def test_batches_depend_on_the_step_only_with_or_without_workers(tmp_path, synthetic):
    pairs = D.find_dataset(synthetic, "folder", "images", "masks")
    store = S.build_sample_store(pairs, 32, tmp_path / "store")
    augmentation = D.SampleAugmentation(p=0.8, crop_scale=(0.5, 1.0), rotate=20, gamma=(0.7, 1.5), noise=0.02,
                                        negative=0.2)
    plain = _loader_batches(store, 0, augmentation)
    workers = _loader_batches(store, 2, augmentation)
    later = _loader_batches(store, 0, augmentation, start=2, steps=2)  # a resumed run's loader
    for a, b in zip(plain, workers):
        for field in ("step", "indices", "codes", "view", "images", "masks", "changed"):
            assert torch.equal(torch.as_tensor(getattr(a, field)), torch.as_tensor(getattr(b, field))), field
    for a, b in zip(plain[2:], later):
        assert a.step == b.step and torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert [b.step for b in plain] == [0, 1, 2, 3]
    assert not torch.equal(plain[0].images, plain[0].view)  # the intensity transforms touch the image only


@needs_kornia
def test_geometric_augmentation_moves_image_and_mask_together():
    mask = torch.zeros(6, 32, 32, dtype=torch.bool)
    mask[:, 8:20, 5:25] = True
    image = mask[:, None].expand(-1, 3, -1, -1).to(torch.uint8) * 255  # the mask drawn as the image
    aug = D.SampleAugmentation(p=1.0, crop_scale=(0.4, 0.8), rotate=40)
    assert aug.has_geometric and not aug.has_intensity
    view, out, moved, changed = aug(image, mask, seed=7)
    assert out is view and not torch.equal(moved, mask)
    assert changed.all()  # p = 1: every sample moved
    for i in range(6):
        assert torch.equal(moved[i], mask[i]) == (not changed[i])
    agree = ((view[:, 0] > 127) == moved).float().mean()
    assert agree > 0.98  # the same warp on both (edges differ by interpolation only)
    again = aug(image, mask, seed=7)
    assert torch.equal(again[0], view) and torch.equal(again[2], moved)
    assert not torch.equal(aug(image, mask, seed=8)[2], moved)
    half = D.SampleAugmentation(p=0.5, rotate=40)(image, mask, seed=1)  # per sample: some left as they were
    for i in range(6):
        assert torch.equal(half[2][i], mask[i]) == (not half[3][i])
    assert 0 < half[3].sum() < 6


def test_augmentation_off_is_the_identity_and_config_errors_name_the_key():
    x, m = torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 8, 8, dtype=torch.bool)
    off = D.SampleAugmentation.from_config(None)
    view, out, masks, changed = off(x, m, seed=0)
    assert not off.enabled and view is x and out is x and masks is m and not changed.any()
    assert str(off) == "no augmentation"
    with pytest.raises(ValueError, match="data.augment.crop_scale"):
        D.SampleAugmentation(crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="data.augment.rotate"):
        D.SampleAugmentation(rotate=-1)


def test_default_and_paper_configs_do_not_augment():
    from leafseg.config import load_config

    for name in (None, "paper", "cpu"):
        cfg = load_config(name, ["data.root=x"])
        assert not D.SampleAugmentation.from_config(cfg.data.augment).enabled, name


@needs_kornia
def test_augmented_training_is_deterministic_and_resumes_bit_for_bit_with_workers(tmp_path, synthetic):
    straight = train(tiny_config(tmp_path / "a", synthetic, *AUGMENT, BITWISE))
    train(tiny_config(tmp_path / "b", synthetic, *AUGMENT, BITWISE, "data.num_workers=2", "train.max_steps=2"))
    resumed = train(tiny_config(tmp_path / "b", synthetic, *AUGMENT, BITWISE, "data.num_workers=2"), resume=True)
    la = [h["loss"] for h in straight.history if "loss" in h]
    assert la == [h["loss"] for h in resumed.history if "loss" in h]
    a, b = saved_weights(straight.run_dir), saved_weights(resumed.run_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    plain = train(tiny_config(tmp_path / "c", synthetic, BITWISE))
    assert la != [h["loss"] for h in plain.history if "loss" in h]


def test_workers_change_no_number(tmp_path, synthetic):
    a = train(tiny_config(tmp_path / "a", synthetic, BITWISE))
    b = train(tiny_config(tmp_path / "b", synthetic, BITWISE, "data.num_workers=2"))
    assert [h["loss"] for h in a.history if "loss" in h] == [h["loss"] for h in b.history if "loss" in h]
    assert a.best_val_dice == b.best_val_dice


def built_leaf_method(cfg):
    """A LEAF method built (networks, frozen targets) by a trainer over cfg's data, without training a step."""
    from leafseg.training.checkpoints import release_run_dir
    from leafseg.training.engine import Trainer
    from leafseg.training.leaf import LeafMethod
    from leafseg.training.run_setup import start_run

    accelerator, run_dir = start_run(cfg, resume=False)
    release_run_dir(run_dir)
    method = LeafMethod(cfg)
    trainer = Trainer(method, cfg, accelerator, run_dir)
    trainer.load_data()
    method.build(trainer.context())
    return method, trainer


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_on_the_fly_targets_are_the_cached_ones(tmp_path, synthetic, backend):
    """With geometric augmentation the mask latents and teacher tokens come from the frozen networks per batch:
    the same functions, on the same backend (``run.cache_backend``), the cache was built with, so an unaugmented
    sample gets its cached targets."""
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    cfg = tiny_config(tmp_path / "run", synthetic, BITWISE, f"run.cache_backend={backend}",
                      "align.flip_tokens=recompute")
    method, trainer = built_leaf_method(cfg)
    assert method.backend == backend
    if backend == "onnx":  # nothing fell back to torch
        from leafseg.pipelines.onnx import OnnxFunction

        assert {k: type(f) for k, f in method._functions.items()} == {"latents": OnnxFunction,
                                                                       "teacher": OnnxFunction}
    store = trainer.data.train
    masks = torch.from_numpy(store.masks.read_range(0, 5)).bool()
    images = torch.from_numpy(store.images.read_range(0, 5))
    for c, (h, v) in enumerate(trainer.codes):
        flipped = D.flip(masks, h, v)[:, None].expand(-1, 3, -1, -1).float()
        views = D.flip(images, h, v)
        with torch.no_grad():
            fly = method.frozen_mask_latents(flipped.contiguous(memory_format=torch.channels_last))
            batch = SimpleNamespace(changed=torch.ones(5, dtype=torch.bool), view=views, tokens=None)
            tokens = method._teacher_tokens(batch)
        cached = torch.from_numpy(method.z0_cache.read(range(5))[:, c])
        torch.testing.assert_close(fly, cached, rtol=1e-4, atol=1e-5)  # another batch size: float rounding
        cached_tokens = torch.from_numpy(method.tokens_cache.read(range(5))[:, c]).float()
        torch.testing.assert_close(tokens, cached_tokens, rtol=2e-3, atol=2e-3)  # the cache stores float16


VOLUME_TRAINING = textwrap.dedent("""
    import json, resource, sys
    from leafseg.training import train
    sys.path.insert(0, sys.argv[3])
    from tiny import tiny_config
    cfg = tiny_config(sys.argv[1], sys.argv[2], "data.resolution=256", "data.hflip=false", "data.vflip=false",
                      "align.enabled=false", "train.max_steps=3", "train.val_every=3", "train.checkpoint_every=3",
                      "train.val_max_images=4", "run.device=cpu")
    result = train(cfg)
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "step": result.step}))
""")


def _volume_dataset(root, volumes: int, slices: int, size: int = 256):
    import nibabel as nib

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(volumes):
        image = rng.integers(0, 1000, (size, size, slices), dtype=np.int16)
        mask = np.zeros((size, size, slices), np.uint8)
        mask[60:140, 80:170, :] = 1
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "images" / f"v{i}.nii"))
        nib.save(nib.Nifti1Image(mask, np.eye(4)), str(root / "masks" / f"v{i}.nii"))


@pytest.mark.slow
def test_training_memory_does_not_grow_with_the_number_of_slices(tmp_path):
    """40 volumes x 100 slices of 256 x 256 train (20 volumes, 2000 slices) and validate (4 volumes, 400 slices) in
    about the resident memory that 4 volumes (200 + 100 slices) need: holding the samples in memory, as the data
    path did before, would add 525 MiB of 8-bit images and masks."""
    peaks = {}
    for volumes in (4, 40):
        root = tmp_path / f"data{volumes}"
        _volume_dataset(root, volumes, 100)
        out = subprocess.run([sys.executable, "-c", VOLUME_TRAINING, str(tmp_path / f"run{volumes}"), str(root),
                              os.path.dirname(__file__)], capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["step"] == 3
        peaks[volumes] = result["peak_rss_mib"]
    in_ram = (1800 + 300) * (3 + 1) * 256 * 256 / 2**20  # the 2100 extra samples, held in memory: 525 MiB
    print(f"peak RSS: {peaks} MiB")
    assert peaks[40] - peaks[4] < 0.2 * in_ram, peaks


def test_negative_crops_hold_no_foreground_and_keep_samples_without_room():
    g = torch.Generator().manual_seed(0)
    images = torch.arange(4 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).view(4, 3, 32, 32)
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[0, 4:12, 20:30] = True   # room below and to the left
    masks[1, 2:30, 2:30] = True    # no room for a crop of 8 px
    masks[2, 10:20, 10:20] = True
    out, empty, replaced = D.augment.negative_crops(images, masks, 1.0, 0.25, g)
    assert replaced.tolist() == [True, False, True, True]
    assert not empty[[0, 2, 3]].any()                     # negatives: empty masks
    assert torch.equal(out[1], images[1]) and torch.equal(empty[1], masks[1])  # no room: unchanged
    assert not torch.equal(out[0], images[0])
    none, kept, replaced = D.augment.negative_crops(images, masks, 0.0, 0.25, g)
    assert torch.equal(none, images) and torch.equal(kept, masks) and not replaced.any()


def test_an_all_negative_batch_trains_and_its_target_is_the_empty_masks_latent(tmp_path, synthetic, monkeypatch):
    """data.augment.negative=1: every sample is a crop without foreground; the x0 target the step regresses is the
    frozen autoencoder's latent of the empty mask."""
    from leafseg.training import leaf

    targets = []
    forward = leaf.LeafTrainingModel.forward

    def spy(self, images, z0, noise, t, *alignment):
        targets.append(z0.clone())
        return forward(self, images, z0, noise, t, *alignment)

    monkeypatch.setattr(leaf.LeafTrainingModel, "forward", spy)
    result = train(tiny_config(tmp_path / "run", synthetic, "data.augment.negative=1.0",
                               "data.augment.negative_min=0.1", BITWISE))
    assert result.step == 4 and all(np.isfinite(h["loss"]) for h in result.history if "loss" in h)
    from leafseg.models import autoencoder as ae_ops
    from leafseg.pipelines import LeafSegPipeline

    pipe = LeafSegPipeline.from_pretrained(result.run_dir / "model-last", local_files_only=True)
    with torch.no_grad():
        empty = ae_ops.encode(pipe.autoencoder, -torch.ones(1, 3, 32, 32)) * ae_ops.latent_scale(pipe.autoencoder)
    for z0 in targets:
        for row in z0:  # synthetic polyps leave room for 10% crops beside them in every sample
            torch.testing.assert_close(row, empty[0], rtol=1e-4, atol=1e-5)


def test_two_datasets_train_together_and_validate_per_dataset(tmp_path, synthetic, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(synthetic, other)
    for folder in ("images", "masks"):  # a second "centre" with fewer images
        for f in sorted((other / folder).iterdir())[:6]:
            f.unlink()
    cfg = tiny_config(tmp_path / "run", synthetic, f"data.sources=[{{root: {other}, name: second}}]",
                      "train.val_at_start=true")
    result = train(cfg)
    run = result.run_dir
    assert (run / "split.json").is_file() and (run / "split-second.json").is_file()
    second = json.loads((run / "split-second.json").read_text())
    first = json.loads((run / "split.json").read_text())
    vals = [h for h in result.history if "val_dice" in h]
    first_name = f"val_dice_{synthetic.name}"  # data.root is named after its folder
    assert all({first_name, "val_dice_second"} <= set(h) for h in vals)
    for h in vals:
        assert h["val_dice"] == pytest.approx((h[first_name] + h["val_dice_second"]) / 2)
    out = capsys.readouterr().out
    assert f"{len(first['train']) + len(second['train'])} train / {len(first['val']) + len(second['val'])} val" in out
    with pytest.raises(ValueError, match=r"config value\(s\) not set: data.sources\[0\].root"):
        train(tiny_config(tmp_path / "bad", synthetic, "data.sources=[{layout: folder}]"))
    with pytest.raises(ValueError, match="used twice"):  # the same folder name as data.root's
        train(tiny_config(tmp_path / "twice", synthetic, f"data.sources=[{{root: {synthetic}}}]"))


def test_source_means_weigh_datasets_equally():
    from leafseg.training.engine import source_means

    mean, each = source_means([1.0, 1.0, 1.0, 0.0], [("a", 3), ("b", 1)])
    assert each == {"a": 1.0, "b": 0.0} and mean == 0.5
    assert source_means([0.2, 0.4], [("data", 2)]) == (pytest.approx(0.3), {"data": pytest.approx(0.3)})
    with pytest.raises(RuntimeError, match="scored 3 samples"):
        source_means([1.0, 1.0, 1.0], [("a", 2)])


def test_a_store_of_another_format_is_decoded_again(tmp_path, synthetic):
    pairs = D.find_dataset(synthetic, "folder", "images", "masks")[:3]
    store = S.build_sample_store(pairs, 16, tmp_path / "store")
    meta = json.loads((store.folder / "samples.json").read_text())
    (store.folder / "samples.json").write_text(json.dumps({**meta, "format": 0}))
    with pytest.raises(ValueError, match="format 0"):
        S.SampleStore(store.folder)
    said = []
    again = S.build_sample_store(pairs, 16, tmp_path / "store", say=said.append)
    assert again.names == store.names and "decoding again" in said[0]


def test_frozen_targets_on_the_fly_match_the_cache(tmp_path, synthetic):
    """run.frozen_targets=on_the_fly: no cache files, the same training up to float rounding (the frozen networks
    see batches of 2 instead of 16)."""
    cached = train(tiny_config(tmp_path / "a", synthetic, BITWISE))
    fly = train(tiny_config(tmp_path / "b", synthetic, BITWISE, "run.frozen_targets=on_the_fly"))
    assert not list((tmp_path / "b" / "cache").glob("mask-latents-*"))
    assert not list((tmp_path / "b" / "cache").glob("teacher-*"))
    np.testing.assert_allclose([h["loss"] for h in fly.history if "loss" in h],
                               [h["loss"] for h in cached.history if "loss" in h], rtol=1e-4)
    with pytest.raises(ValueError, match="run.frozen_targets"):
        train(tiny_config(tmp_path / "c", synthetic, "run.frozen_targets=later"))


def test_balanced_sampling_draws_each_dataset_equally_often():
    from leafseg.data.loader import batch_indices, dataset_weights

    w = dataset_weights([30, 10])
    assert torch.allclose(w[:30], torch.full((30,), 1 / 30, dtype=torch.float64)) and w[30] == 0.1
    drawn = torch.cat([batch_indices(40, 4, 1, 0, step, seed=0, weights=w) for step in range(2000)])
    share = float((drawn >= 30).double().mean())
    assert abs(share - 0.5) < 0.03  # per image it would be 0.25
    # a step's batch depends on (seed, step) only: a resumed run draws the same; ranks split one global batch
    assert torch.equal(batch_indices(40, 4, 1, 0, 17, 0, w), batch_indices(40, 4, 1, 0, 17, 0, w))
    both = torch.cat([batch_indices(40, 2, 2, r, 17, 0, w) for r in (0, 1)])
    assert torch.equal(both, batch_indices(40, 4, 1, 0, 17, 0, w))
    with pytest.raises(ValueError, match="every dataset needs a training sample"):
        dataset_weights([5, 0])


def test_dataset_sampling_in_a_run_and_its_config_error(tmp_path, synthetic, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(synthetic, other)
    for folder in ("images", "masks"):  # a second, smaller "centre"
        for f in sorted((other / folder).iterdir())[:16]:
            f.unlink()
    cfg = tiny_config(tmp_path / "run", synthetic, f"data.sources=[{{root: {other}, name: second}}]",
                      "data.sampling=dataset", "train.max_steps=40", "train.val_every=40",
                      "train.checkpoint_every=40", "train.log_samples=true")
    result = train(cfg)
    assert "each dataset equally often" in capsys.readouterr().out
    n_first = len(json.loads((result.run_dir / "split.json").read_text())["train"])
    seen = json.loads((result.run_dir / "logs" / "samples-rank0.json").read_text())
    share = sum(i >= n_first for i in seen) / len(seen)
    assert 0.35 < share < 0.65  # per image: 4 of 16 training images, 0.25
    with pytest.raises(ValueError, match=r"data.sampling: Invalid value 'balanced', expected one of \[image, dataset"):
        train(tiny_config(tmp_path / "bad", synthetic, "data.sampling=balanced"))
    assert not (tmp_path / "bad").exists()
