"""Full-frame negatives (data.augment.negative_mode=inpaint): the object painted out of the whole frame, the mask
empty; the frame elsewhere untouched; too-large objects left as they are; seeded; refused cleanly without OpenCV."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from leafseg import data as D
from leafseg.data.augment import INPAINT_MAX_AREA, inpaint_object, inpainted_negatives
from tiny import BITWISE, tiny_config

pytest.importorskip("cv2", reason="OpenCV (leafseg[augment]) paints the objects out")


def frame(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A textured frame (stripes: folds) with a bright disc (the object) in the middle."""
    y, x = np.mgrid[:size, :size]
    image = np.stack([100 + 40 * np.sin(x / 3), 80 + 30 * np.cos(y / 4), 60 + 0 * x], -1).astype(np.uint8)
    mask = (y - size / 2) ** 2 + (x - size / 2) ** 2 < (size / 6) ** 2
    image[mask] = (250, 240, 230)
    return image, mask


def test_inpainting_removes_the_object_and_keeps_the_rest_of_the_frame():
    image, mask = frame()
    out = inpaint_object(image, mask, dilate=0.05)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out[mask].mean() < 160  # the bright object is gone: filled from the surrounding stripes (~60-140)
    far = np.ones_like(mask)
    far[16:48, 16:48] = False  # away from the dilated hole
    assert np.array_equal(out[far], image[far])
    assert inpaint_object(image, np.zeros_like(mask)) is image  # nothing to paint out


def test_an_object_too_large_to_paint_out_is_refused():
    image, _ = frame()
    big = np.zeros((64, 64), bool)
    big[:, : int(64 * (INPAINT_MAX_AREA + 0.05))] = True
    assert inpaint_object(image, big) is None


def test_inpainted_negatives_give_full_frames_with_empty_masks():
    image, mask = frame(32)
    images = torch.from_numpy(np.stack([image] * 3)).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack([mask, mask, np.ones_like(mask)]))  # the last: all object, left as it is
    out, empty, replaced = inpainted_negatives(images, masks, 1.0, 0.03, torch.Generator().manual_seed(0))
    assert replaced.tolist() == [True, True, False]
    assert not empty[:2].any() and torch.equal(empty[2], masks[2]) and torch.equal(out[2], images[2])
    assert out.shape == images.shape and not torch.equal(out[0], images[0])
    none, kept, replaced = inpainted_negatives(images, masks, 0.0, 0.03, torch.Generator().manual_seed(0))
    assert torch.equal(none, images) and torch.equal(kept, masks) and not replaced.any()


def test_the_augmentation_draws_inpainted_negatives_by_seed():
    image, mask = frame(32)
    images = torch.from_numpy(np.stack([image] * 8)).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack([mask] * 8))
    aug = D.SampleAugmentation(p=0.0, negative=0.5, negative_mode="inpaint")
    assert "negative inpainted frames 0.5" in str(aug)
    view, out, m, changed = aug(images, masks, seed=5)
    assert 0 < changed.sum() < 8 and not m[changed].any() and torch.equal(m[~changed], masks[~changed])
    assert torch.equal(aug(images, masks, seed=5)[1], out)


def test_a_wrong_mode_is_refused_and_missing_opencv_says_what_to_install(monkeypatch):
    with pytest.raises(ValueError, match="negative_mode"):
        D.SampleAugmentation(negative=0.1, negative_mode="paint")
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match=r"leafseg\[augment\]"):
        D.SampleAugmentation(negative=0.1, negative_mode="inpaint")


def test_training_with_inpainted_negatives_is_deterministic(tmp_path, synthetic):
    from leafseg.training import train
    from tiny import saved_weights

    extra = ("data.augment.negative=0.5", "data.augment.negative_mode=inpaint", "align.enabled=false", BITWISE)
    a = train(tiny_config(tmp_path / "a", synthetic, *extra))
    b = train(tiny_config(tmp_path / "b", synthetic, *extra))
    wa, wb = saved_weights(a.run_dir), saved_weights(b.run_dir)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)
