"""torch.compile of a pipeline's networks (leafseg.pipelines.compilation): the same masks as eager, weights that
save and load as an ordinary model's, and clear refusals. Skipped with the reason where no C++ compiler is found."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leafseg.pipelines import LeafSegPipeline
from leafseg.pipelines.compilation import compile_pipeline, compiled_parts, compiler_missing, kernel_cache
from tiny import tiny_pipeline

pytestmark = pytest.mark.skipif(compiler_missing("cpu") is not None, reason=str(compiler_missing("cpu")))


@pytest.mark.slow  # compiling three tiny networks takes about a minute on 2 cores
def test_a_compiled_pipeline_gives_eager_masks_and_saves_as_an_ordinary_one(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    images = [np.random.default_rng(k).integers(0, 255, (40, 48, 3), dtype=np.uint8) for k in range(2)]
    eager = tiny_pipeline(resolution=32)
    threshold = float(np.median(eager(images, seed=3, batch_size=2).probabilities[0]))  # masks neither empty nor full
    expected = eager(images, seed=3, batch_size=2, threshold=threshold)
    assert 0.2 < expected.masks[0].mean() < 0.8
    pipe = tiny_pipeline(resolution=32)
    state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    assert compile_pipeline(pipe) == ["image_encoder", "unet", "mask_decoder"]
    assert kernel_cache() == tmp_path / "cache" / "leafseg" / "inductor"
    out = pipe(images, seed=3, batch_size=2, threshold=threshold)
    for p, q in zip(out.probabilities, expected.probabilities):
        np.testing.assert_allclose(p, q, atol=1e-4)  # fused kernels reorder float sums: not bit for bit
    assert all(np.array_equal(m, n) for m, n in zip(out.masks, expected.masks))
    assert any((tmp_path / "cache" / "leafseg" / "inductor").iterdir())  # compiled kernels kept for the next run

    assert pipe.unet.state_dict().keys() == state.keys()  # no "_orig_mod." prefixes
    pipe.save_pretrained(tmp_path / "model")
    again = LeafSegPipeline.from_pretrained(tmp_path / "model", local_files_only=True)
    assert not any(getattr(m, "_compiled_call_impl", None) for m in compiled_parts(again).values())
    for k, v in again.unet.state_dict().items():
        assert torch.equal(v, state[k]), k
    reloaded = again(images, seed=3, batch_size=2, threshold=threshold)
    for p, q in zip(reloaded.probabilities, expected.probabilities):
        np.testing.assert_array_equal(p, q)


def test_compile_refuses_an_unknown_mode_and_says_why_it_cannot_run(monkeypatch):
    pipe = tiny_pipeline(resolution=32)
    with pytest.raises(ValueError, match="compile mode must be one of"):
        compile_pipeline(pipe, mode="fastest")
    import leafseg.pipelines.compilation as compilation

    monkeypatch.setattr(compilation.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(RuntimeError, match="no C.. compiler found"):
        compile_pipeline(pipe)


@pytest.mark.slow
def test_predict_with_compile_writes_eager_masks(tmp_path, monkeypatch):
    from PIL import Image

    from leafseg.cli import main

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pipe = tiny_pipeline(resolution=32)
    pipe.save_pretrained(tmp_path / "model")
    image = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    threshold = f"{np.median(pipe([image], seed=3).probabilities[0]):.4f}"  # a mask neither empty nor full
    common = ["predict", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "a.png"), "--seed", "3",
              "--threshold", threshold]
    assert main([*common, "--output", str(tmp_path / "eager")]) == 0
    assert main([*common, "--output", str(tmp_path / "compiled"), "--compile"]) == 0
    eager, compiled = (np.asarray(Image.open(tmp_path / f / "a_mask.png")) for f in ("eager", "compiled"))
    assert 0.2 < (eager > 0).mean() < 0.8 and np.array_equal(eager, compiled)
    export = tmp_path / "onnx"
    (export).mkdir()
    (export / "leafseg_onnx.json").write_text("{}")
    with pytest.raises(ValueError, match="--compile is for the saved PyTorch model"):
        from leafseg.pipelines import load_pipeline

        load_pipeline(export, compile=True)


@pytest.mark.slow
def test_train_compile_resumes_bit_for_bit_and_stays_beside_eager(tmp_path, synthetic, monkeypatch):
    """train.compile: a run stopped and resumed gives the weights of a straight compiled run exactly (dropout draws
    from torch's generator in compiled graphs too), and the compiled run's weights stay beside eager's (fused
    kernels round differently)."""
    from leafseg.training import train
    from tiny import BITWISE, saved_weights, tiny_config

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dropout = ("image_encoder.dropout=0.2", "unet.dropout=0.2")  # random ops inside the compiled graphs
    eager = train(tiny_config(tmp_path / "eager", synthetic, BITWISE, *dropout))
    straight = train(tiny_config(tmp_path / "a", synthetic, BITWISE, *dropout, "train.compile=true"))
    train(tiny_config(tmp_path / "b", synthetic, BITWISE, *dropout, "train.compile=true", "train.max_steps=2"))
    resumed = train(tiny_config(tmp_path / "b", synthetic, BITWISE, *dropout, "train.compile=true"), resume=True)
    for part in ("unet", "image_encoder"):
        a, b, e = (saved_weights(r.run_dir, part) for r in (straight, resumed, eager))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
            torch.testing.assert_close(a[k], e[k], rtol=1e-3, atol=1e-4, msg=k)
    assert [h["loss"] for h in straight.history if "loss" in h] == [h["loss"] for h in resumed.history if "loss" in h]
