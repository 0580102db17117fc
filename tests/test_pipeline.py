import numpy as np
import pytest
import torch
from PIL import Image

from leafseg.diffusion import PREDICTION_TYPES, predict_x0
from leafseg.models import autoencoder as ae_ops
from leafseg.models.image_encoder import ImageEncoder
from leafseg.pipelines import LeafSegPipeline
from tiny import tiny_autoencoder, tiny_pipeline


def images(n=2, h=40, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for _ in range(n)]


def test_image_encoder_starts_as_the_autoencoder_encoder():
    ae = tiny_autoencoder()
    enc = ImageEncoder.from_autoencoder(ae, dropout=0.2).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(enc(x), ae_ops.encode(ae, x))
    # only the encoder half is copied
    n_enc = sum(p.numel() for p in ae.encoder.parameters()) + sum(p.numel() for p in ae.quant_conv.parameters())
    assert sum(p.numel() for p in enc.parameters()) == n_enc
    dropouts = [m.p for m in enc.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(p == 0.2 for p in dropouts)


@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_single_step_is_x0_from_t999(kind):
    pipe = tiny_pipeline(kind)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = pipe.predict_latents(x, num_inference_steps=1, seed=7)[0]
    # by hand: z_T from the seed, t = 999, x0 from the UNet output under the parameterisation
    scale = ae_ops.latent_scale(pipe.autoencoder)
    with torch.no_grad():
        zx = pipe.image_encoder(x) * scale
        z_t = torch.randn(zx.shape[1:], generator=torch.Generator().manual_seed(7)).expand_as(zx)
        t = torch.tensor([999, 999])
        out = pipe.unet(torch.cat([zx, z_t], 1), t).sample
        expected = predict_x0(kind, pipe.scheduler, out, z_t, t)
        if pipe.scheduler.config.clip_sample:  # the default (the authors'): x0_hat clamped to [-1, 1]
            expected = expected.clamp(-1, 1)
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-4)


def test_outputs_at_input_size_and_types():
    pipe = tiny_pipeline()
    pil = Image.fromarray((np.random.default_rng(0).random((30, 50, 3)) * 255).astype(np.uint8))
    out = pipe([pil, images(1, 17, 23)[0]])
    assert [m.shape for m in out.masks] == [(30, 50), (17, 23)]
    assert out.masks[0].dtype == bool and out.probabilities[0].dtype == np.float32
    assert out.uncertainty is None
    p = out.probabilities[0]
    assert p.min() >= 0 and p.max() <= 1
    np.testing.assert_array_equal(out.masks[0], p > 0.5)


def test_ensemble_probability_and_uncertainty():
    pipe = tiny_pipeline()
    out = pipe(images(2), ensemble_size=3, seed=0)
    assert len(out.uncertainty) == 2 and out.uncertainty[0].shape == (40, 24)
    assert (out.uncertainty[0] >= 0).all()
    # the ensemble mean is the mean of the members' soft masks
    members = [pipe(images(2), seed=k).probabilities[0] for k in range(3)]
    np.testing.assert_allclose(out.probabilities[0], np.mean(members, axis=0), atol=1e-5)


def test_multistep_ddim_runs_and_differs():
    pipe = tiny_pipeline("epsilon")
    one = pipe(images(1), num_inference_steps=1).probabilities[0]
    five = pipe(images(1), num_inference_steps=5).probabilities[0]
    assert one.shape == five.shape and not np.allclose(one, five)


def test_determinism_and_batch_independence():
    pipe = tiny_pipeline()
    a = pipe(images(3), seed=5).probabilities
    b = pipe(images(3), seed=5).probabilities
    c = pipe(images(3)[1:2], seed=5).probabilities  # the same image alone in its batch
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_allclose(a[1], c[0], atol=1e-5)
    d = pipe(images(3), seed=6).probabilities
    assert not np.allclose(a[0], d[0])


def test_save_load_round_trip_has_only_inference_networks(tmp_path):
    pipe = tiny_pipeline("v_prediction")
    pipe.save_pretrained(tmp_path / "model")
    loaded = LeafSegPipeline.from_pretrained(tmp_path / "model", local_files_only=True)
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.resolution == pipe.resolution == 32
    expected = sum(p.numel() for m in (pipe.autoencoder, pipe.image_encoder, pipe.unet) for p in m.parameters())
    got = sum(p.numel() for m in (loaded.autoencoder, loaded.image_encoder, loaded.unet) for p in m.parameters())
    assert got == expected
    from safetensors.torch import load_file
    on_disk = sum(t.numel() for f in (tmp_path / "model").rglob("*.safetensors") for t in load_file(f).values())
    assert on_disk == expected  # nothing else (no projector, no teacher) was written
    x = images(2)
    np.testing.assert_array_equal(pipe(x, seed=1).probabilities[0], loaded(x, seed=1).probabilities[0])


def test_bad_inputs():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError):
        pipe(torch.rand(4, 8, 8))
    with pytest.raises(ValueError):
        pipe(images(1), ensemble_size=0)


def test_precision_casts_unet_and_decoder_and_keeps_the_encoder_and_masks(tmp_path, monkeypatch):
    """bf16 for the UNet and the mask decoder (channels-last on the CPU), the image encoder and x0 step in float32;
    auto picks bf16 only where the device computes it natively; the masks stay those of fp32."""
    from leafseg.pipelines import load_pipeline
    from leafseg.pipelines.precision import bf16_is_fast, resolve_precision

    tiny_pipeline().save_pretrained(tmp_path / "model")
    ref = load_pipeline(tmp_path / "model", "cpu")
    assert ref.precision == "fp32" and ref.unet.dtype == torch.float32
    fast = load_pipeline(tmp_path / "model", "cpu", precision="bf16")
    assert fast.precision == "bf16" and fast.unet.dtype == next(fast.autoencoder.parameters()).dtype == torch.bfloat16
    assert fast.image_encoder.dtype == torch.float32
    images = [np.random.default_rng(i).integers(0, 256, (40, 30, 3), dtype=np.uint8) for i in range(3)]
    a, b = ref(images), fast(images)
    for pa, pb in zip(a.probabilities, b.probabilities):
        assert pb.dtype == np.float32 and np.abs(pa - pb).max() < 0.05
    assert resolve_precision("auto", "cpu") == ("bf16" if bf16_is_fast("cpu") else "fp32")
    assert load_pipeline(tmp_path / "model", "cpu", precision="auto").precision == resolve_precision("auto", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        load_pipeline(tmp_path / "model", "cpu", precision="fp16")
    # a CPU without bf16 units (oneDNN would emulate it): auto falls back to float32 everywhere
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    plain = load_pipeline(tmp_path / "model", "cpu", precision="auto")
    assert plain.precision == "fp32" and plain.unet.dtype == plain.image_encoder.dtype == torch.float32
    np.testing.assert_array_equal(plain(images).probabilities[0], a.probabilities[0])


def test_precision_parts_choose_which_networks_run_in_bf16():
    """set_precision's parts: only the named networks go to bf16 (channels-last on the CPU), the rest to float32;
    an unknown part is refused by name; fp32 puts every part back to float32."""
    from leafseg.pipelines.precision import set_precision

    pipe = tiny_pipeline()
    assert set_precision(pipe, "bf16", ("unet",)) == "bf16"
    assert pipe.unet.dtype == torch.bfloat16 and pipe.image_encoder.dtype == torch.float32
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    encoder_convs = [m for m in pipe.image_encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert encoder_convs[0].weight.is_contiguous(memory_format=torch.channels_last)  # float32, channels-last too
    set_precision(pipe, "bf16", ("image_encoder", "unet", "autoencoder"))
    assert next(pipe.autoencoder.parameters()).dtype == pipe.image_encoder.dtype == torch.bfloat16
    masks = pipe(images(2)).masks  # every part in bf16 still runs end to end
    assert masks[0].dtype == bool
    assert set_precision(pipe, "fp32", ("unet",)) == "fp32"
    assert {next(m.parameters()).dtype for m in (pipe.unet, pipe.image_encoder, pipe.autoencoder)} == {torch.float32}
    with pytest.raises(ValueError, match="decoder"):
        set_precision(pipe, "bf16", ("decoder",))


def test_flip_tta_is_the_mean_of_the_flipped_views_and_commutes_with_flips():
    """flip_tta: each ensemble member's soft mask averaged over the image and its three flipped copies, flipped back
    (checked against four separate calls); the views form a group, so a flipped input gives the flipped result;
    an image's result does not depend on its batch."""
    pipe = tiny_pipeline()
    x = images(3, h=32, w=32)  # the model's resolution: no resizing between the views and the output
    views = [(), (-1,), (-2,), (-2, -1)]
    separate = [pipe([im.flip(d) if d else im for im in x], ensemble_size=2, seed=3).probabilities for d in views]
    want = [np.mean([(np.flip(p[i], d) if d else p[i]) for p, d in zip(separate, views)], axis=0) for i in range(3)]
    got = pipe(x, ensemble_size=2, seed=3, flip_tta=True)
    for a, b in zip(got.probabilities, want):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert got.uncertainty is not None and not np.allclose(got.probabilities[0], separate[0][0], atol=1e-3)
    mirrored = pipe([im.flip(-1) for im in x], ensemble_size=2, seed=3, flip_tta=True)
    for a, b in zip(mirrored.probabilities, got.probabilities):
        np.testing.assert_allclose(a, np.flip(b, -1), atol=1e-5)
    alone = pipe(x[1:2], ensemble_size=2, seed=3, flip_tta=True, batch_size=1)
    np.testing.assert_allclose(alone.probabilities[0], got.probabilities[1], atol=1e-5)
