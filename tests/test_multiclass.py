"""Several structures in one model: label maps read and written, one mask latent per structure, per-class
metrics against hand-computed values, the pipeline's label maps, and a short real training on cxr-structures with
evaluate and predict after it."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from leafseg import data as D
from leafseg.metrics import MultiClassMetrics, class_dice, mean_class_dice
from leafseg.models.class_latents import class_masks, class_probabilities, split_groups
from leafseg.pipelines import LeafSegPipeline

from conftest import require_shared
from tiny import TINY_UNET, tiny_autoencoder, tiny_pipeline

TABLE = {"background": 0, "right lung": 1, "left lung": 2, "heart": 3}


# --------------------------------------------------------------------------------------------- class latents
def test_class_masks_of_one_structure_are_leafs_mask():
    mask = torch.tensor([[[0, 1], [1, 0]]], dtype=torch.bool)
    assert torch.equal(class_masks(mask, 1), mask[:, None].expand(-1, 3, -1, -1).float())
    labels = torch.tensor([[[0, 1], [2, 3]]])
    stacked = class_masks(labels, 3)
    assert stacked.shape == (1, 9, 2, 2)
    for k in (1, 2, 3):
        assert torch.equal(stacked[0, 3 * (k - 1):3 * k], (labels[0] == k).float().expand(3, -1, -1))


def test_class_probabilities_hand_values():
    # one structure: the foreground probability is the soft mask itself (LEAF's reading)
    soft = torch.tensor([0.1, 0.5, 0.9]).view(1, 1, 1, 3)
    p = class_probabilities(soft)
    assert torch.allclose(p[:, 1], soft[:, 0], atol=1e-6)
    # two structures at 0.8 and 0.4: background 0.2*0.6, class 1 0.8*0.6, class 2 0.2*0.4, normalised
    p = class_probabilities(torch.tensor([0.8, 0.4]).view(1, 2, 1, 1))[0, :, 0, 0]
    raw = torch.tensor([0.12, 0.48, 0.08])
    assert torch.allclose(p, raw / raw.sum(), atol=1e-5)
    labels = torch.randint(0, 5, (2, 6, 7))
    exact = class_masks(labels, 4)[:, ::3]  # (B, K, H, W) hard masks
    assert torch.equal(class_probabilities(exact).argmax(1), labels)


def test_channel_groups_encode_and_decode_each_structure_alone():
    from leafseg.training.caches import MaskLatents

    ae = tiny_autoencoder()
    labels = torch.randint(0, 3, (2, 32, 32))
    grouped = MaskLatents(ae, 0.5, groups=2)(class_masks(labels, 2))
    assert grouped.shape == (2, 8, 4, 4)
    one = MaskLatents(ae, 0.5)((labels == 2).float()[:, None].expand(-1, 3, -1, -1).contiguous())
    assert torch.allclose(grouped[:, 4:], one, atol=1e-5)
    assert split_groups(grouped, 2).shape == (4, 4, 4, 4)


# ------------------------------------------------------------------------------------------------- label maps
def test_label_maps_read_from_grey_palette_and_nifti(tmp_path):
    nib = pytest.importorskip("nibabel")
    table = D.LabelTable.from_dict(TABLE, "labels.json")
    labels = np.array([[0, 1, 1], [2, 3, 0]], np.uint8)
    Image.fromarray(labels).save(tmp_path / "grey.png")
    pal = Image.fromarray(labels, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    pal.save(tmp_path / "palette.png")
    nib.save(nib.Nifti1Image(labels[..., None].astype(np.int16), np.eye(4)), str(tmp_path / "vol.nii.gz"))
    for name in ("grey.png", "palette.png", "vol.nii.gz"):
        got = D.load_label_map(tmp_path / name, table)
        assert got.dtype == np.uint8 and got.tolist() == labels.tolist(), name


def test_unknown_label_value_names_file_and_value(tmp_path):
    table = D.LabelTable.from_dict(TABLE, "labels.json")
    Image.fromarray(np.array([[0, 1], [7, 3]], np.uint8)).save(tmp_path / "case9.png")
    with pytest.raises(ValueError, match=r"case9\.png: mask value\(s\) \[7\] not in the label table"):
        D.load_label_map(tmp_path / "case9.png", table)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="rgb.png: a RGB image; a label map is one plane"):
        D.load_label_map(tmp_path / "rgb.png", table)


def test_dataset_with_a_table_gives_label_map_pairs(tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.array([[0, 1, 2, 3]] * 8, np.uint8).repeat(2, 1)).save(tmp_path / "masks" / "a.png")
    (tmp_path / "labels.json").write_text(json.dumps({str(v): k for k, v in TABLE.items()}))
    pairs = D.find_dataset(tmp_path)
    assert pairs[0].labels.to_dict() == TABLE
    assert D.load_pair_mask(pairs[0]).max() == 3
    # the same folder without its table: a binary dataset would refuse several labels (as today)
    (tmp_path / "labels.json").unlink()
    assert D.find_dataset(tmp_path)[0].labels is None
    with pytest.raises(ValueError, match="ambiguous mask"):
        D.load_pair_mask(D.find_dataset(tmp_path)[0])


def test_resize_labels_keeps_classes_and_binary_path():
    labels = np.zeros((64, 64), np.uint8)
    labels[8:40, 4:30], labels[10:50, 34:60], labels[50:60, 20:44] = 1, 2, 3
    small = D.resize_mask(labels, 32)
    assert small.dtype == np.uint8 and set(np.unique(small)) == {0, 1, 2, 3}
    back = np.asarray(Image.fromarray(small).resize((64, 64), Image.NEAREST))
    assert np.mean(back == labels) > 0.97
    binary = labels == 1  # a bool mask still takes the binary rule
    assert D.resize_mask(binary, 32).dtype == bool


# ----------------------------------------------------------------------------------------------------- metrics
def test_class_metrics_against_hand_computed_values():
    gt = np.array([[0, 1, 1, 0], [2, 2, 0, 0]])
    pred = np.array([[0, 1, 0, 0], [2, 2, 2, 3]])
    # class 1: |P|=1 |G|=2 TP=1 -> 2/3; class 2: |P|=3 |G|=2 TP=2 -> 0.8; class 3: in pred only -> 0
    assert class_dice(pred, gt, 3) == pytest.approx([2 / 3, 0.8, 0.0])
    assert mean_class_dice(pred, gt, 3) == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    assert math.isnan(class_dice(pred, gt, 4)[3])  # class 4 in neither: not scored
    m = MultiClassMetrics({1: "a", 2: "b", 3: "c"})
    m.update(pred, gt, "x")
    m.update(np.zeros_like(gt), np.zeros_like(gt), "empty")  # nothing anywhere: no structure scored
    s = m.summary(n_bootstrap=100)
    assert s["classes"]["a"]["dice"]["mean"] == pytest.approx(2 / 3)
    assert s["classes"]["b"]["iou"]["mean"] == pytest.approx(2 / 3)  # TP 2 / union 3
    assert s["classes"]["c"]["dice"]["n_valid"] == 1 and s["classes"]["c"]["dice"]["n_nan"] == 1
    assert s["mean_foreground"]["dice"]["mean"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    rows = m.rows()
    assert rows[0]["dice_b"] == pytest.approx(0.8) and math.isnan(rows[1]["dice"]) and rows[1]["gt_empty"]


# ----------------------------------------------------------------------------------------------------- pipeline
def _multi(labels=TABLE):
    from leafseg.models.denoiser import build_unet

    pipe = tiny_pipeline()
    torch.manual_seed(3)
    unet = build_unet(latent_channels=4, sample_size=4, mask_groups=len(labels) - 1, **TINY_UNET).eval()
    return LeafSegPipeline(pipe.autoencoder, pipe.image_encoder, unet, pipe.scheduler, labels=labels)


def test_pipeline_returns_label_maps_and_saves_its_table(tmp_path):
    multi = _multi()
    assert multi.num_classes == 3 and tiny_pipeline().num_classes == 1
    assert multi.unet.config.in_channels == 4 + 3 * 4 and multi.unet.config.out_channels == 3 * 4
    images = [np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)]
    out = multi(images, ensemble_size=2)
    assert out.masks[0].shape == (40, 50) and out.masks[0].dtype == np.uint8 and out.masks[0].max() <= 3
    assert out.probabilities[0].shape == (4, 40, 50)
    assert np.allclose(out.probabilities[0].sum(0), 1, atol=1e-5)
    assert out.uncertainty[0].shape == (40, 50)
    assert np.array_equal(out.masks[0], out.probabilities[0].argmax(0))
    multi.save_pretrained(tmp_path / "m")
    again = LeafSegPipeline.from_pretrained(tmp_path / "m", local_files_only=True)
    assert again.label_table.to_dict() == TABLE
    from leafseg.evaluation.calibrate import calibrate_model

    with pytest.raises(ValueError, match="segments several structures; the frame-level decision"):
        calibrate_model(tmp_path / "m", [], [])
    assert np.array_equal(again(images, ensemble_size=2).masks[0], out.masks[0])
    with pytest.raises(ValueError, match=r"flip_tta mirrors the image, but \['right lung', 'left lung'\]"):
        multi(images, flip_tta=True)
    unsided = _multi({"background": 0, "liver": 1, "tumour": 2})
    assert unsided(images, flip_tta=True).masks[0].shape == (40, 50)


def test_pipeline_refuses_a_table_its_unet_cannot_predict():
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="labels name 3 structures but the UNet predicts 4 channels, not 3 x 4"):
        LeafSegPipeline(pipe.autoencoder, pipe.image_encoder, pipe.unet, pipe.scheduler, labels=TABLE)


# ---------------------------------------------------------------------------- real data: train, evaluate, predict
CXR = "data/cxr-structures"


def _small_cxr(tmp_path, n=8, size=96):
    """The first n cxr-structures pairs at size x size (label maps resized class by class), with their table."""
    root = require_shared(CXR + "/labels.json", "weights/taef2") / CXR
    out = tmp_path / "cxr"
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True)
    for path in sorted((root / "masks").glob("*.png"))[:n]:
        image = Image.open(root / "images" / path.name).convert("RGB").resize((size, size), Image.BILINEAR)
        image.save(out / "images" / path.name)
        Image.fromarray(D.resize_labels(np.asarray(Image.open(path)), size)).save(out / "masks" / path.name)
    (out / "labels.json").write_text((root / "labels.json").read_text())
    return out


@pytest.mark.slow
def test_cxr_training_evaluate_predict_write_label_maps(tmp_path):
    from leafseg.config import load_config
    from leafseg.evaluation.evaluate import evaluate
    from leafseg.prediction import predict
    from leafseg.training import train

    data = _small_cxr(tmp_path)
    taef2 = require_shared("weights/taef2") / "weights" / "taef2"
    stems = sorted(p.stem for p in (data / "images").iterdir())
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": stems[:6], "val": stems[6:7], "test": stems[7:]}))
    cfg = load_config("cpu-small", [f"run.output_dir={tmp_path / 'run'}", f"data.root={data}",
                                    f"data.split_file={split}", f"autoencoder.path={taef2}", "data.resolution=64",
                                    "data.hflip=false",
                                    "train.max_steps=6", "train.val_every=3", "train.checkpoint_every=6",
                                    "train.log_every=3", "train.warmup_steps=2", "run.device=cpu"])
    result = train(cfg)
    model = result.run_dir / "model-best"
    pipe = LeafSegPipeline.from_pretrained(model, local_files_only=True)
    table = json.loads((data / "labels.json").read_text())
    assert pipe.label_table.to_dict() == {name: int(v) for v, name in table.items()}
    summary = evaluate(str(model), str(data), "test", str(split), str(tmp_path / "eval"))["summary"]
    assert set(summary["metrics"]["classes"]) == {"right lung", "left lung", "cardiomediastinum", "airways"}
    assert summary["metrics"]["paper_compatible"] is None
    assert 0 <= summary["metrics"]["mean_foreground"]["dice"]["mean"] <= 1
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| right lung |" in report and "mean over structures" in report
    assert "dice_left lung" in (tmp_path / "eval" / "per_image.csv").read_text().splitlines()[0]
    predict(str(model), str(data / "images" / f"{stems[7]}.png"), str(tmp_path / "pred"))
    written = np.asarray(Image.open(tmp_path / "pred" / f"{stems[7]}_mask.png"))
    assert set(np.unique(written)) <= {0, 1, 2, 3, 4}
    again = pipe([np.asarray(Image.open(data / "images" / f"{stems[7]}.png"))]).masks[0]
    assert np.array_equal(written, pipe.label_table.values_of(again))  # written and read back equal


@pytest.mark.slow
def test_cxr_basicunet_peer_trains_on_label_maps(tmp_path):
    from leafseg.config import load_config
    from leafseg.evaluation.evaluate import evaluate
    from leafseg.pipelines import load_pipeline
    from leafseg.training import train

    data = _small_cxr(tmp_path, n=6, size=64)
    stems = sorted(p.stem for p in (data / "images").iterdir())
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": stems[:4], "val": stems[4:5], "test": stems[5:]}))
    cfg = load_config("cpu", [f"run.output_dir={tmp_path / 'run'}", f"data.root={data}", "method=basicunet",
                              f"data.split_file={split}", "data.resolution=64", "train.max_steps=4",
                              "train.val_every=2", "train.checkpoint_every=4", "train.log_every=2",
                              "train.warmup_steps=1", "train.time_budget_min=null", "run.device=cpu",
                              "peers.basicunet.features=[8,8,16,16,32,8]"])
    result = train(cfg)
    pipe = load_pipeline(result.run_dir / "model-best")
    assert pipe.label_table.num_classes == 4
    out = pipe([np.asarray(Image.open(data / "images" / f"{stems[5]}.png"))])
    assert out.masks[0].dtype == np.uint8 and out.probabilities[0].shape == (5, 64, 64)
    summary = evaluate(str(result.run_dir / "model-best"), str(data), "test", str(split), str(tmp_path / "e"))
    assert "airways" in summary["summary"]["metrics"]["classes"]


def test_onnx_export_refuses_a_multi_class_model(tmp_path):
    from leafseg.pipelines.onnx import export_onnx

    with pytest.raises(ValueError, match="segments several structures; ONNX export covers one-structure"):
        export_onnx(_multi(), tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_score_reads_label_maps_by_the_table_above_the_masks(tmp_path):
    from leafseg.evaluation.compare import read_per_image
    from leafseg.evaluation.score import score

    (tmp_path / "data" / "masks").mkdir(parents=True)
    (tmp_path / "pred").mkdir()
    (tmp_path / "data" / "labels.json").write_text(json.dumps(TABLE))
    gt = np.array([[0, 1, 1, 0], [2, 2, 0, 3]], np.uint8)
    pred = np.array([[0, 1, 0, 0], [2, 2, 2, 3]], np.uint8)
    Image.fromarray(gt).save(tmp_path / "data" / "masks" / "c1.png")
    Image.fromarray(pred).save(tmp_path / "pred" / "c1_mask.png")
    summary = score(tmp_path / "pred", tmp_path / "data" / "masks", tmp_path / "out")["summary"]
    classes = summary["metrics"]["classes"]
    assert classes["right lung"]["dice"]["mean"] == pytest.approx(2 / 3)
    assert classes["left lung"]["dice"]["mean"] == pytest.approx(0.8)
    assert classes["heart"]["dice"]["mean"] == pytest.approx(1.0)
    assert read_per_image(tmp_path / "out", "dice_left lung") == {"c1": pytest.approx(0.8)}
    from leafseg.evaluation.compare import compare

    from leafseg.evaluation.compare import compare_text

    paired = compare(tmp_path / "out", tmp_path / "out", "dice_left lung", n_bootstrap=50)
    assert paired["mean_a"] == pytest.approx(0.8) and paired["difference"] == 0
    assert "dice_left lung over 1 images" in compare_text(paired)
    with pytest.raises(ValueError, match="dice_<structure>"):
        compare(tmp_path / "out", tmp_path / "out", "volume_left lung")
    Image.fromarray(np.array([[0, 9]], np.uint8)).save(tmp_path / "pred" / "c1_mask.png")
    with pytest.raises(ValueError, match=r"c1_mask\.png: mask value\(s\) \[9\] not in the label table"):
        score(tmp_path / "pred", tmp_path / "data" / "masks", tmp_path / "out2")


def test_serve_and_predict_draw_a_legend_for_label_maps(tmp_path):
    pytest.importorskip("matplotlib")
    from leafseg.app import views
    from leafseg.prediction import Segmentation, overlay_file_array

    table = D.LabelTable.from_dict(TABLE)
    image = np.zeros((60, 80, 3), np.uint8)
    labels = np.zeros((60, 80), np.uint8)
    labels[10:30, 10:30], labels[10:30, 40:60], labels[40:55, 20:60] = 1, 2, 3
    drawn = overlay_file_array(image, labels, table)
    assert drawn.shape[1] == 80 and drawn.shape[0] > 60  # the legend strip below
    assert tuple(drawn[20, 20]) != tuple(drawn[20, 50])  # two structures, two colours
    probs = np.stack([labels == k for k in range(4)]).astype(np.float32)
    seg = Segmentation([image], [labels], [probs], None, labels=table)
    picture, probability, uncertainty = views(seg, 0)
    assert picture.shape[0] > 60 and probability.ndim == 3 and uncertainty is None
    path = seg.write_mask(tmp_path / "case")
    assert np.array_equal(np.asarray(Image.open(path)), table.values_of(labels))


def test_sample_store_keeps_class_indices(tmp_path):
    from leafseg.data.store import SampleStore, build_sample_store

    for sub in ("images", "masks"):
        (tmp_path / "d" / sub).mkdir(parents=True)
    labels = np.zeros((32, 32), np.uint8)
    labels[2:12, 2:12], labels[16:30, 4:20], labels[4:10, 20:30] = 1, 2, 3
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "d" / "images" / "a.png")
    Image.fromarray(labels).save(tmp_path / "d" / "masks" / "a.png")
    (tmp_path / "d" / "labels.json").write_text(json.dumps(TABLE))
    store = build_sample_store(D.find_dataset(tmp_path / "d"), 32, tmp_path / "store")
    assert store.foreground == [int(np.count_nonzero(labels))]
    _, masks = SampleStore(tmp_path / "store").read([0])
    assert masks.dtype == np.uint8 and np.array_equal(masks[0], labels)  # what training and validation see
    _, batch = next(store.batches(4))
    assert np.array_equal(batch[0].numpy(), labels)


def test_label_volume_written_with_the_tables_values(tmp_path):
    nib = pytest.importorskip("nibabel")
    from leafseg.prediction import Segmentation

    table = D.LabelTable.from_dict({"background": 0, "liver": 1, "tumour": 7})
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 3), np.int16), affine), str(tmp_path / "ct.nii.gz"))
    volume = D.read_volume(tmp_path / "ct.nii.gz")
    planes = [np.full((6, 5), k % 3, np.uint8) for k in range(3)]  # class indices 0, 1, 2 slice by slice
    seg = Segmentation([None] * 3, planes, [None] * 3, None, volume, 2, labels=table)
    written = nib.load(str(seg.write_mask(tmp_path / "ct_mask")))
    data = np.asarray(written.dataobj)
    assert data.shape == (6, 5, 3) and [int(data[0, 0, k]) for k in range(3)] == [0, 1, 7]
    assert np.allclose(written.affine, affine)


def test_the_served_page_names_each_structure():
    from leafseg import app

    multi = _multi()
    assert "several structures: " + ", ".join(multi.label_table.foreground.values()) in app.model_description(
        "no-such-model", multi)
    assert "named in the strip under the picture" in app.overlay_legend(multi)
