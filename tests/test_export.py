"""ONNX export (issue 11): the exported single-step pipeline gives the PyTorch pipeline's masks, keeps only the
inference networks, and runs from the CLI with --backend onnx."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leafseg.cli import main
from leafseg.pipelines import load_pipeline
from leafseg.pipelines.onnx import OnnxSegPipeline, export_onnx
from leafseg.pipelines.supervised import SupervisedSegPipeline, build_segmentation_unet
from tiny import tiny_pipeline

pytest.importorskip("onnxruntime")


def _images(n=3):
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 40, 24, generator=g) for _ in range(n)]


@pytest.mark.parametrize("kind", ["sample", "epsilon", "v_prediction"])
def test_exported_single_step_equals_pytorch(tmp_path, kind):
    pipe = tiny_pipeline(kind)
    export_onnx(pipe, tmp_path / "onnx")
    onnx_pipe = load_pipeline(tmp_path / "onnx")
    assert isinstance(onnx_pipe, OnnxSegPipeline)
    for ensemble in (1, 3):
        ref = pipe(_images(), ensemble_size=ensemble, seed=4)
        got = onnx_pipe(_images(), ensemble_size=ensemble, seed=4)
        for a, b in zip(ref.probabilities, got.probabilities):
            np.testing.assert_allclose(a, b, atol=1e-4)
        agree = np.mean([np.mean(a == b) for a, b in zip(ref.masks, got.masks)])
        assert agree > 0.999
    ref, got = pipe(_images(), seed=4, flip_tta=True), onnx_pipe(_images(), seed=4, flip_tta=True)
    for a, b in zip(ref.probabilities, got.probabilities):
        np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="single step"):
        onnx_pipe(_images(1), num_inference_steps=4)


def test_export_holds_only_the_inference_networks(tmp_path):
    import onnx

    pipe = tiny_pipeline()
    export_onnx(pipe, tmp_path / "onnx")
    names = [i.name for f in ("encode", "denoise_decode") for i in onnx.load(str(tmp_path / "onnx" / f"{f}.onnx"))
             .graph.initializer]
    assert names and not any("projector" in n or "teacher" in n for n in names)
    n_weights = sum(int(np.prod(i.dims)) for f in ("encode", "denoise_decode")
                    for i in onnx.load(str(tmp_path / "onnx" / f"{f}.onnx")).graph.initializer)
    decoder = sum(p.numel() for n, p in pipe.autoencoder.named_parameters() if not n.startswith(("encoder",
                                                                                                 "quant_conv")))
    expected = decoder + sum(p.numel() for m in (pipe.image_encoder, pipe.unet) for p in m.parameters())
    assert abs(n_weights - expected) / expected < 0.02  # plus a few constants the tracer folds in


def test_supervised_export_and_cli_backend(tmp_path, capsys):
    torch.manual_seed(0)
    unet = build_segmentation_unet(32, block_out_channels=(8, 16), layers_per_block=1, attention_levels=1,
                                   norm_num_groups=4, attention_head_dim=8).eval()
    SupervisedSegPipeline(unet).save_pretrained(tmp_path / "model")
    assert main(["export", "--model", str(tmp_path / "model"), "--format", "onnx", "--output",
                 str(tmp_path / "onnx")]) == 0
    # into the model folder (or a folder inside it) it is refused: the model would become an ONNX folder
    for inside in (tmp_path / "model", tmp_path / "model" / "onnx"):
        assert main(["export", "--model", str(tmp_path / "model"), "--output", str(inside)]) == 2
        assert "apart from the inputs and the model" in capsys.readouterr().err
    assert not (tmp_path / "model" / "leafseg_onnx.json").exists() and not (tmp_path / "model" / "onnx").exists()
    ref = load_pipeline(tmp_path / "model", "cpu")(_images())
    got = load_pipeline(tmp_path / "onnx")(_images())
    for a, b in zip(ref.probabilities, got.probabilities):
        np.testing.assert_allclose(a, b, atol=1e-4)
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(tmp_path / "in" / "a.png")
    assert main(["predict", "--model", str(tmp_path / "onnx"), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out"), "--backend", "onnx"]) == 0
    assert (tmp_path / "out" / "a_mask.png").exists()
    assert main(["predict", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out2"), "--backend", "onnx"]) == 2
    assert "leafseg export" in capsys.readouterr().err
