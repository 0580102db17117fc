"""`configs/paper.yaml` is the authors' code, pinned by observable numbers (issue 8, facts 1-6).

Each test builds what the paper config builds, through the same functions training and inference use, and checks a
number the authors' setup produces; none copies their code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D

from leafseg.config import load_config
from leafseg.diffusion import make_scheduler
from leafseg.metrics import PaperMetrics, dice, iou, paper_dice, paper_iou
from leafseg.models.denoiser import build_unet, set_unet_dropout
from leafseg.training import LeafTrainingModel, build_components
from leafseg.training.optimisation import make_ema
from tiny import TINY_AE, TINY_UNET, tiny_pipeline


@pytest.fixture(autouse=True)
def pretrained_root(monkeypatch):  # paper.yaml's networks live under $LEAFSEG_PRETRAINED (not read by these tests)
    monkeypatch.setenv("LEAFSEG_PRETRAINED", "/pretrained")


@pytest.fixture(scope="module")
def paper():
    return load_config("paper", ["data.root=x"])


# 1. noise schedule --------------------------------------------------------------------------------------------
def test_paper_schedule_is_linear_in_beta(paper):
    s = make_scheduler(**paper.diffusion)
    assert s.config.beta_schedule == "linear" and s.config.set_alpha_to_one
    assert s.alphas_cumprod[999].item() == pytest.approx(2.0e-4, rel=0.03)
    compvis = make_scheduler(**{**paper.diffusion, "beta_schedule": "scaled_linear"})
    assert compvis.alphas_cumprod[999].item() == pytest.approx(6.7e-4, rel=0.03)
    torch.testing.assert_close(s.betas.double(), torch.linspace(0.0015, 0.0155, 1000, dtype=torch.float64))


# 2. x0 clipping and DDIM spacing --------------------------------------------------------------------------------
@pytest.mark.parametrize("clip", [True, False])
def test_single_step_clamps_x0_when_clipping(clip):
    pipe = tiny_pipeline("sample")
    pipe.scheduler = make_scheduler("sample", clip_sample=clip)
    with torch.no_grad():  # make the raw x0 prediction large so that a clamp shows
        pipe.unet.conv_out.bias.fill_(3.0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = pipe.predict_latents(x, seed=3)[0]
    scale = pipe.autoencoder.config.scaling_factor
    with torch.no_grad():
        zx = pipe.image_encoder(x) * scale
        z_t = torch.randn(zx.shape[1:], generator=torch.Generator().manual_seed(3)).expand_as(zx)
        raw = pipe.unet(torch.cat([zx, z_t], 1), 999).sample
    assert raw.max() > 1.5
    torch.testing.assert_close(latents, raw.clamp(-1, 1) if clip else raw)


def test_paper_clip_and_leading_spacing(paper):
    s = make_scheduler(**paper.diffusion)
    assert s.config.clip_sample and s.config.clip_sample_range == 1.0
    s.set_timesteps(10)
    assert s.timesteps.tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]  # diffusers' "leading"


# 3. UNet dropout, also for a pretrained UNet ------------------------------------------------------------------
def test_pretrained_unet_from_paper_config_has_dropout(tmp_path, paper):
    torch.manual_seed(0)
    build_unet(4, 4, dropout=0.0, **TINY_UNET).save_pretrained(tmp_path / "unet")  # "pretrained" without dropout
    cfg = load_config("paper", [
        "data.root=x", "data.resolution=32", "autoencoder.kind=kl",
        f"autoencoder.config={TINY_AE}".replace(" ", ""), f"unet.pretrained={tmp_path / 'unet'}"])
    unet = build_components(cfg)["unet"]
    rates = [m.dropout.p for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    assert rates and set(rates) == {0.2} and unet.config.dropout == 0.2 and unet.config.in_channels == 8
    x, t = torch.randn(1, 8, 4, 4), torch.tensor([500])
    unet.train()
    with torch.no_grad():
        a, b = unet(x, t).sample, unet(x, t).sample
    assert not torch.allclose(a, b)  # dropout active in training
    unet.eval()
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t).sample, unet(x, t).sample)  # and off in eval
    with pytest.raises(ValueError, match="dropout"):
        set_unet_dropout(unet, 1.5)


# 4. EMA -------------------------------------------------------------------------------------------------------
def test_paper_ema_decay_is_diffusers_default(paper):
    ema = make_ema(build_unet(4, 4, **TINY_UNET), paper.train.ema, "cpu")
    # diffusers counts its own updates from 1; its decay at internal step s + 1 uses s
    assert ema.get_decay(1) == 0.0  # the first update copies the weights
    for s in (1, 10, 1000):
        assert ema.get_decay(s + 1) == pytest.approx(min(0.9999, (1 + s) / (10 + s)), abs=1e-12)
    assert ema.get_decay(200_000) == pytest.approx(0.9999)
    warm = make_ema(build_unet(4, 4, **TINY_UNET), load_config("cpu-small", ["data.root=x"]).train.ema, "cpu")
    assert warm.get_decay(11) == pytest.approx(min(0.999, 1 - 11 ** -0.6667))  # train.ema.power


# 4b. step count ---------------------------------------------------------------------------------------------
def test_paper_trains_a_fixed_step_count(paper):
    # the authors' 100 000 steps, whatever the machine; the cpu recipe's wall-time budget is off here
    assert paper.train.max_steps == 100_000 and paper.train.time_budget_min is None
    assert load_config("cpu", ["data.root=x"]).train.time_budget_min == 57


# 5. alignment weight quirk, teacher resize and dtype ----------------------------------------------------------
def test_paper_alignment_divides_by_batch_size(paper):
    assert paper.align.reference_batch_quirk and paper.align.weight == 0.75
    assert paper.align.teacher_antialias is False and paper.align.teacher_dtype == "bfloat16"

    cfg = load_config("paper", ["data.root=x"])
    pipe = tiny_pipeline("sample")
    from leafseg.models.alignment import Projector

    projector = Projector(16, 8, 32)
    model = LeafTrainingModel(pipe.image_encoder, pipe.unet, projector, pipe.scheduler, cfg, 1.0).eval()
    g = torch.Generator().manual_seed(0)
    images, z0 = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, torch.randn(4, 4, 4, 4, generator=g)
    noise, t = torch.randn(4, 4, 4, 4, generator=g), torch.tensor([1, 200, 500, 999])
    tokens = torch.randn(4, 4, 8, generator=g)
    with torch.no_grad():
        out = model(images, z0, noise, t, tokens)
        model.quirk = False
        plain = model(images, z0, noise, t, tokens)
    assert out["loss_align"].item() == pytest.approx(plain["loss_align"].item() / 4, rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["loss_main"].item() + 0.75 * plain["loss_align"].item() / 4,
                                               rel=1e-5)


def test_teacher_options_reach_the_teacher(monkeypatch):
    import leafseg.models.teachers as teachers
    from leafseg.training import build_alignment_teacher

    seen = {}

    class Fake(teachers.Teacher):
        name, feature_dim, native_grid = "fake", 2, 1

        def __init__(self, **kwargs):
            super().__init__()
            seen.update(kwargs)
            self.w = torch.nn.Parameter(torch.ones(1))
            self.freeze()

        def features(self, images):
            return images.mean(1, keepdim=True).expand(-1, 2, -1, -1) * self.w

    monkeypatch.setitem(teachers.TEACHERS, "fake", Fake)
    cfg = load_config("paper", ["data.root=x", "align.teacher=fake"])
    teacher = build_alignment_teacher(cfg.align)
    assert seen["antialias"] is False and teacher.w.dtype == torch.bfloat16
    assert teacher(torch.rand(1, 3, 4, 4), 2).dtype == torch.float32  # tokens come back in float32


# 6. the paper's "Dice" ------------------------------------------------------------------------------------------
def _pair():
    p = np.zeros((16, 16), bool)
    g = np.zeros((16, 16), bool)
    p[2:10, 2:10] = True
    g[4:12, 4:12] = True
    return p, g


def test_paper_dice_is_foreground_dice_with_both_empty_zero():
    p, g = _pair()
    assert paper_dice(p, g) == dice(p, g) == pytest.approx(2 * 36 / 128)
    assert paper_iou(p, g) == iou(p, g) == pytest.approx(36 / 92)
    empty = np.zeros_like(p)
    assert paper_dice(empty, empty) == 0.0 and dice(empty, empty) == 1.0
    assert paper_iou(empty, empty) == 0.0
    acc = PaperMetrics(batch_size=2)
    for a, b in ((p, g), (empty, empty), (p, empty)):
        acc.update(a, b)
    r = acc.result()
    assert r["dice"] == pytest.approx(2 * 36 / 128 / 3) and r["both_empty_scored_0"] == 1
    assert r["miou_batch_mean"] == pytest.approx(((36 / 92 + 0) / 2 + 0) / 2) and r["n_batches"] == 2
    assert r["miou_image_mean"] == pytest.approx(36 / 92 / 3)


def test_paper_miou_warns_when_the_order_of_the_images_decides_it():
    """The authors' batch mean: 8 images with an object (IoU 36/92 each) then 2 without (scored 0), batches of 4,
    give (36/92 + 36/92 + 0) / 3 in this order but 8/10 * 36/92 per image; sorted stems that put every normal image
    in the last batch do exactly this, and the number is flagged."""
    p, g = _pair()
    empty = np.zeros_like(p)
    acc = PaperMetrics(batch_size=4)
    for a, b in [(p, g)] * 8 + [(empty, empty)] * 2:
        acc.update(a, b)
    r = acc.result()
    assert r["miou_batch_mean"] == pytest.approx(2 / 3 * 36 / 92)
    assert r["miou_image_mean"] == pytest.approx(8 / 10 * 36 / 92)
    assert "depends on the order of the images" in r["batch_order_warning"]
    balanced = PaperMetrics(batch_size=4)
    for a, b in [(p, g)] * 3 + [(empty, empty)] + [(p, g)] * 3 + [(empty, empty)]:
        balanced.update(a, b)
    assert balanced.result()["batch_order_warning"] is None


def test_paper_numbers_match_torchmetrics_single_channel():
    """Parity with the authors' call (torchmetrics 1.6.1 pinned in the test extra): (B, 1, H, W) integer masks."""
    tm = pytest.importorskip("torchmetrics")
    from torchmetrics.segmentation import GeneralizedDiceScore, MeanIoU

    rng = np.random.default_rng(0)
    preds = rng.random((6, 16, 16)) > 0.6
    gts = rng.random((6, 16, 16)) > 0.7
    preds[1] = gts[1] = False  # both empty
    preds[2] = False  # prediction empty
    acc = PaperMetrics(batch_size=3)
    for a, b in zip(preds, gts):
        acc.update(a, b)
    gds = GeneralizedDiceScore(num_classes=2, weight_type="linear")
    gds.update(torch.from_numpy(preds)[:, None].long(), torch.from_numpy(gts)[:, None].long())
    assert acc.result()["dice"] == pytest.approx(float(gds.compute()), abs=1e-6)
    if tm.__version__ == "1.6.1":  # later versions drop both-empty images from MeanIoU instead of scoring them 0
        mious = []
        for i in (0, 3):
            m = MeanIoU(num_classes=2)
            m.update(torch.from_numpy(preds[i:i + 3])[:, None].long(), torch.from_numpy(gts[i:i + 3])[:, None].long())
            mious.append(float(m.compute()))
        assert acc.result()["miou_batch_mean"] == pytest.approx(np.mean(mious), abs=1e-6)
    # a two-channel (background, foreground) one-hot input, which the authors do not use, is pixel accuracy instead
    p, g = _pair()
    two = GeneralizedDiceScore(num_classes=2, weight_type="linear")
    two.update(torch.from_numpy(np.stack([~p, p]))[None].long(), torch.from_numpy(np.stack([~g, g]))[None].long())
    assert float(two.compute()) == pytest.approx((p == g).mean(), abs=1e-6)
    assert float(two.compute()) != pytest.approx(paper_dice(p, g), abs=0.05)
