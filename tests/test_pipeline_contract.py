"""The contract every leafseg pipeline keeps, whatever its network (in the spirit of diffusers'
``PipelineTesterMixin``): the call's inputs and output, single image against batch, what it says it supports, the
round trip through its folder (``save_pretrained`` or ``leafseg export``) and ``load_pipeline``, and bad inputs
refused with the same messages. ``predict``, ``evaluate`` and the app rely on nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from leafseg.pipelines import (PIPELINES, LeafSegPipeline, MonaiSegPipeline, SegmentationPipelineOutput,
                               SupervisedSegPipeline, load_pipeline)
from leafseg.pipelines.supervised import build_segmentation_unet
from tiny import tiny_pipeline

ONNX = ("leaf-onnx", "supervised-onnx")
KINDS = ("leaf", "supervised", "dynunet", "basicunet", *ONNX)


def _torch_pipeline(kind: str):
    if kind.startswith("leaf"):
        return tiny_pipeline(resolution=32)
    if kind.startswith("supervised"):
        torch.manual_seed(0)
        return SupervisedSegPipeline(build_segmentation_unet(32, block_out_channels=(8, 16), layers_per_block=1,
                                                             attention_levels=1, norm_num_groups=4,
                                                             attention_head_dim=8).eval())
    pytest.importorskip("monai", reason="MONAI peers need the peers extra: pip install 'leafseg[peers]'")
    from test_peers import tiny_segmenter

    return MonaiSegPipeline(network=tiny_segmenter(kind))


@pytest.fixture(params=KINDS)
def saved(request, tmp_path):
    """(kind, the pipeline as built, its folder, the pipeline loaded back from the folder)."""
    kind = request.param
    pipe = _torch_pipeline(kind)
    folder = tmp_path / kind
    if kind in ONNX:
        pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed: pip install 'leafseg[onnx]'")
        from leafseg.pipelines.onnx import export_onnx

        export_onnx(pipe, folder)
    else:
        pipe.save_pretrained(folder)
    return kind, pipe, folder, load_pipeline(folder, "cpu")


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]


def test_every_pipeline_class_is_covered():
    assert set(PIPELINES) == {LeafSegPipeline.__name__, SupervisedSegPipeline.__name__, MonaiSegPipeline.__name__}


def test_the_call_and_its_output(saved):
    kind, _, _, pipe = saved
    out = pipe(_images(), threshold=0.4)
    assert isinstance(out, SegmentationPipelineOutput) and out.uncertainty is None
    assert [m.shape for m in out.masks] == [(20, 30), (32, 32)]
    for mask, probability in zip(out.masks, out.probabilities):
        assert mask.dtype == bool and probability.dtype == np.float32 and probability.shape == mask.shape
        assert 0 <= probability.min() and probability.max() <= 1
        np.testing.assert_array_equal(mask, probability > 0.4)
    masks, probabilities, uncertainty = pipe(_images(), threshold=0.4, return_dict=False)
    np.testing.assert_array_equal(masks[1], out.masks[1])
    # what predict and evaluate read from any pipeline
    assert {"intensity", "slice_axis"} <= set(pipe.config) and pipe.device is not None
    assert isinstance(pipe.supports_multistep, bool) and isinstance(pipe.supports_ensembles, bool)


def test_one_image_in_any_form_equals_its_row_of_a_batch(saved):
    """PIL and uint8 arrays are the same pixels; a float tensor is resized by another rule, so it is compared with a
    batch of float tensors."""
    _, _, _, pipe = saved
    images = _images()
    as_tensor = [torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in images]
    batch = pipe(images, seed=2).probabilities[0]
    for form in (images[0], Image.fromarray(images[0])):
        np.testing.assert_allclose(pipe(form, seed=2).probabilities[0], batch, atol=1e-5)
    np.testing.assert_allclose(pipe(as_tensor[0], seed=2).probabilities[0], pipe(as_tensor, seed=2).probabilities[0],
                               atol=1e-5)


def test_the_folder_round_trip_keeps_the_output(saved):
    kind, built, folder, loaded = saved
    tolerance = 1e-4 if kind in ONNX else 1e-6
    np.testing.assert_allclose(loaded(_images(), seed=1).probabilities[1], built(_images(), seed=1).probabilities[1],
                               atol=tolerance)
    assert type(load_pipeline(folder)) is type(loaded)


def test_what_a_pipeline_supports_is_what_it_does(saved):
    _, _, _, pipe = saved
    image = _images()[0]
    if pipe.supports_ensembles:
        out = pipe(image, ensemble_size=3)
        assert out.uncertainty is not None and out.uncertainty[0].shape == (20, 30)
    else:
        with pytest.raises(ValueError, match="ensemble_size"):
            pipe(image, ensemble_size=3)
    if pipe.supports_multistep:
        assert pipe(image, num_inference_steps=3).masks[0].shape == (20, 30)
    else:
        with pytest.raises(ValueError, match="num_inference_steps"):
            pipe(image, num_inference_steps=3)


@pytest.mark.parametrize("bad, error, message", [
    (torch.rand(4, 8, 8), ValueError, r"expected a \(3, H, W\) image tensor, got shape \(4, 8, 8\)"),
    (np.zeros((8, 8, 5), np.uint8), ValueError, r"expected an \(H, W, 3\) image array, got shape \(8, 8, 5\)"),
    (np.full((8, 8, 3), 2.0, np.float32), ValueError, r"\[0, 1\]"),
    ("frame.png", TypeError, "unsupported image type str"),
])
def test_bad_inputs_are_refused_with_one_message(saved, bad, error, message):
    _, _, _, pipe = saved
    with pytest.raises(error, match=message):
        pipe(bad)
