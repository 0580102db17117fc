"""No silent wrong answer: mask encodings, interrupted checkpoint swaps, unreadable inputs, overwrites, non-finite
training, unset config keys, corrupt model folders, pickles that would run code (issue 12), and the newcomer's
first-hour fixes (issue 13)."""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from leafseg import data as D
from leafseg.cli import main
from leafseg.training import train
from tiny import BITWISE, tiny_config, tiny_pipeline


# --------------------------------------------------------------------------------------------- mask encodings
def _blob(value=1, dtype=np.uint8) -> np.ndarray:
    a = np.zeros((8, 8), dtype)
    a[2:5, 2:6] = value
    return a


@pytest.mark.parametrize("name,make", [
    ("grey-label-100", lambda: Image.fromarray(_blob(100))),
    ("label-0-1", lambda: Image.fromarray(_blob(1))),
    ("intensity-0-255", lambda: Image.fromarray(_blob(255))),
    ("sixteen-bit", lambda: Image.fromarray(_blob(65535, np.uint16))),
])
def test_grey_masks_are_read_by_encoding(tmp_path, name, make):
    make().save(tmp_path / f"{name}.png")
    assert D.load_mask(tmp_path / f"{name}.png").sum() == 12


def test_palette_alpha_and_colour_masks(tmp_path):
    pal = Image.fromarray(_blob(1), mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # VOC style: index 1 is the object
    pal.save(tmp_path / "palette.png")
    assert D.load_mask(tmp_path / "palette.png").sum() == 12
    voc = _blob(1)
    voc[0, :] = 255  # VOC "void" border: background for a binary task
    vp = Image.fromarray(voc, mode="P")
    vp.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    vp.save(tmp_path / "voc.png")
    assert D.load_mask(tmp_path / "voc.png").sum() == 12
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 200  # constant colour, the object in the alpha channel
    rgba[..., 3] = _blob(255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    assert D.load_mask(tmp_path / "alpha.png").sum() == 12
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = _blob(255)  # red on black: a grey conversion would give 76 < 128
    Image.fromarray(red).save(tmp_path / "red.png")
    assert D.load_mask(tmp_path / "red.png").sum() == 12


def test_ambiguous_masks_are_refused_naming_file_and_values(tmp_path):
    multi = _blob(1)
    multi[6, 6] = 2
    Image.fromarray(multi).save(tmp_path / "labels.png")
    with pytest.raises(ValueError, match=r"labels\.png.*0, 1, 2"):
        D.load_mask(tmp_path / "labels.png")
    two = np.zeros((8, 8), np.uint8)
    two[0, :3] = [100, 50, 25]
    Image.fromarray(two).save(tmp_path / "grey.png")
    with pytest.raises(ValueError, match=r"grey\.png.*ambiguous"):
        D.load_mask(tmp_path / "grey.png")
    pal = _blob(1)
    pal[6, 6] = 2
    p = Image.fromarray(pal, mode="P")
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    p.save(tmp_path / "pal2.png")
    with pytest.raises(ValueError, match=r"pal2\.png.*several object labels \[1, 2\]"):
        D.load_mask(tmp_path / "pal2.png")


def test_all_empty_training_masks_are_reported_before_training(tmp_path, synthetic):
    root = tmp_path / "data"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for f in sorted((synthetic / "images").iterdir())[:8]:
        (root / "images" / f.name).write_bytes(f.read_bytes())
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks" / f.name)
    with pytest.raises(ValueError, match="masks are empty"):
        train(tiny_config(tmp_path / "run", root))
    assert not (tmp_path / "run" / "checkpoint-last").exists()


def test_training_says_how_many_masks_are_empty(tmp_path, synthetic, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthetic, root)
    blank = sorted(f.stem for f in (root / "masks").iterdir())[::3]
    for stem in blank:
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks" / f"{stem}.png")
    train(tiny_config(tmp_path / "run", root, "train.max_steps=1"))
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    n_train, n_val = (sum(s in blank for s in split[k]) for k in ("train", "val"))
    out = capsys.readouterr().out
    assert (f"masks: {n_train} of {len(split['train'])} train and {n_val} of {len(split['val'])} val samples are "
            "empty") in out and n_train > 0


# -------------------------------------------------------------------------------------- checkpoints and runs
def test_kill_inside_the_checkpoint_swap_is_recovered(tmp_path, synthetic, monkeypatch):
    run = tmp_path / "run"
    train(tiny_config(run, synthetic, "train.max_steps=2", "train.checkpoint_every=2", BITWISE))
    real_rename = Path.rename

    def rename(self, target):
        if self.name == ".checkpoint-last.tmp":  # checkpoint-last -> checkpoint-last.old done, this one not
            raise KeyboardInterrupt("killed inside the swap")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(run, synthetic, "train.max_steps=4", "train.checkpoint_every=2", BITWISE), resume=True)
    monkeypatch.setattr(Path, "rename", real_rename)
    assert not (run / "checkpoint-last").exists() and (run / ".checkpoint-last.tmp" / "trainer_state.json").exists()
    assert (run / "checkpoint-last.old" / "trainer_state.json").exists()
    with pytest.raises(FileExistsError, match="--resume"):  # a fresh start over it is refused
        train(tiny_config(run, synthetic, "train.max_steps=4"))
    resumed = train(tiny_config(run, synthetic, "train.max_steps=4", BITWISE), resume=True)  # the newest complete one
    assert resumed.step == 4
    straight = train(tiny_config(tmp_path / "b", synthetic, "train.max_steps=4", "train.checkpoint_every=2", BITWISE))
    a = [h["loss"] for h in straight.history if "loss" in h]
    assert [h["loss"] for h in resumed.history if "loss" in h] == a


def test_a_kill_inside_a_model_swap_is_recovered_and_leaves_no_stale_folders(tmp_path, synthetic):
    from leafseg.training.checkpoints import recover_checkpoint

    run = tmp_path / "run"
    train(tiny_config(run, synthetic, "train.max_steps=2"))
    (run / "model-best").rename(run / "model-best.old")  # killed between the swap's two renames
    (run / ".model-last.tmp-abc123").mkdir()  # a half-written export of a killed process
    recover_checkpoint(run)
    assert (run / "model-best" / "model_index.json").is_file() and not (run / "model-best.old").exists()
    assert not list(run.glob(".model-*.tmp-*"))


def test_second_training_into_one_folder_is_refused(tmp_path, synthetic):
    import fcntl

    from leafseg.training.checkpoints import lock_run_dir

    run = tmp_path / "run"
    run.mkdir()
    holder = open(run / ".lock", "w")  # another process's lock, as flock sees it
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(FileExistsError, match="another training run"):
        lock_run_dir(run)
    holder.close()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, synthetic, capsys):
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    OmegaConf.save(tiny_config(run, synthetic), tmp_path / "tiny.yaml")
    code = main(["train", "--config", str(tmp_path / "tiny.yaml"), "train.max_steps=40", "train.lr=1e30",
                 "train.grad_clip=0", "train.warmup_steps=0", "train.val_every=100", "train.checkpoint_every=1"])
    err = capsys.readouterr().err
    assert code == 2 and "non-finite training loss at step" in err
    failed_at = int(err.split("non-finite training loss at step ")[1].split()[0])
    state = json.loads((run / "checkpoint-last" / "trainer_state.json").read_text())
    assert state["step"] == failed_at - 1 and all(np.isfinite(h["loss"]) for h in state["history"] if "loss" in h)
    assert f"the last good state is {run / 'checkpoint-last'} (step {failed_at - 1})" in err
    assert "or resume from it" in err
    assert all(torch.isfinite(p).all() for p in tiny_load(run / "model-last").unet.parameters())
    # before the first checkpoint there is none to name
    code = main(["train", "--config", str(tmp_path / "tiny.yaml"), "run.output_dir=" + str(tmp_path / "early"),
                 "train.max_steps=40", "train.lr=1e30", "train.grad_clip=0", "train.warmup_steps=0",
                 "train.val_every=100", "train.checkpoint_every=40"])
    err = capsys.readouterr().err
    assert code == 2 and "no checkpoint was written yet" in err
    assert "resume from it" not in err and "start again in a new run folder" in err  # nothing to resume from
    assert not (tmp_path / "early" / "checkpoint-last").exists()


def tiny_load(folder):
    from leafseg.pipelines import load_pipeline

    return load_pipeline(folder, "cpu")


def test_non_finite_models_are_neither_saved_nor_loaded(tmp_path):
    from leafseg.training.checkpoints import save_pipeline

    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "good")
    with torch.no_grad():
        pipe.unet.conv_out.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="conv_out.weight"):
        save_pipeline(pipe, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    pipe.save_pretrained(tmp_path / "nan")  # written behind leafseg's back
    with pytest.raises(FloatingPointError, match="unet"):
        tiny_load(tmp_path / "nan")


def test_unset_key_is_refused_before_anything_is_written(tmp_path, capsys):
    code = main(["train", "--output", str(tmp_path / "run"), "train.max_steps=1"])
    assert code == 2 and "data.root" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_paper_config_needs_its_pretrained_root_named(tmp_path, capsys, monkeypatch):
    # paper.yaml reads its networks from $LEAFSEG_PRETRAINED: never from a folder relative to where the user stands
    monkeypatch.delenv("LEAFSEG_PRETRAINED", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrained" / "ldm" / "vae").mkdir(parents=True)
    code = main(["train", "--config", "paper", "--output", str(tmp_path / "run"), "data.root=x"])
    err = capsys.readouterr().err
    assert code == 2 and "LEAFSEG_PRETRAINED" in err and "autoencoder.path" in err
    assert not (tmp_path / "run").exists()


def test_overrides_after_an_option_are_accepted():
    from leafseg.cli import build_parser, parse_args

    args = parse_args(build_parser(), ["train", "train.max_steps=3", "--config", "c.yaml", "--output", "runs/x",
                                       "data.root=d"])
    assert args.overrides == ["train.max_steps=3", "data.root=d"] and args.output == "runs/x"
    with pytest.raises(SystemExit):
        parse_args(build_parser(), ["evaluate", "--model", "m", "--data", "d", "stray=1"])


def test_corrupt_model_folders_name_the_file(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model_index.json").write_text("{oops")
    with pytest.raises(ValueError, match="model_index.json"):
        tiny_load(tmp_path / "m")
    pipe.save_pretrained(tmp_path / "t")
    weights = tmp_path / "t" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(ValueError, match=str(tmp_path / "t")):
        tiny_load(tmp_path / "t")


def test_decompression_bomb_is_refused_clearly(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=r"big\.png: refused"):
        D.load_image(tmp_path / "big.png")


# ------------------------------------------------------------------------------------------------- predict
def _model(tmp_path) -> Path:
    tiny_pipeline().save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_predict_skips_unreadable_files_and_says_so(tmp_path, capsys):
    model, inputs = _model(tmp_path), tmp_path / "in"
    inputs.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(inputs / name)
    (inputs / "broken.png").write_bytes(b"not a png")
    code = main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "broken.png" in err and "skipped 1" in err
    assert sorted(p.name for p in (tmp_path / "out").glob("*_mask.png")) == ["a_mask.png", "b_mask.png"]
    code = main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(tmp_path / "out2"),
                 "--strict"])
    assert code == 2 and "broken.png" in capsys.readouterr().err


def test_predict_outputs_never_overwrite_each_other(tmp_path, capsys):
    model, inputs = _model(tmp_path), tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(inputs / "1.png")
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(inputs / "1.jpg")
    assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").glob("*_mask.png")) == ["1_jpg_mask.png", "1_png_mask.png"]
    assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(tmp_path / "o")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(tmp_path / "o"),
                 "--overwrite", "--save-probabilities", "--threshold", "0.3"]) == 0
    prob = np.load(tmp_path / "o" / "1_png_probability.npy")
    mask = np.asarray(Image.open(tmp_path / "o" / "1_png_mask.png")) > 0
    assert prob.shape == (20, 30) and np.array_equal(mask, prob > 0.3)
    assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(tmp_path / "u"),
                 "--uncertainty"]) == 2
    assert "--ensemble" in capsys.readouterr().err


def test_outputs_never_delete_what_the_user_made(tmp_path, capsys):
    """An output that is, holds or lies inside an input or the model is refused; --overwrite empties only a folder
    leafseg wrote; an output that is a file is named."""
    model, inputs = _model(tmp_path), tmp_path / "data" / "images"
    inputs.mkdir(parents=True)
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(inputs / "1.png")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for out in (inputs, inputs.parent, tmp_path, model, model / "sub"):
        assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(out),
                     "--overwrite"]) == 2
        assert "apart from the inputs and the model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing removed, nothing written
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(mine), "--overwrite"]) == 2
    assert "only empties a folder leafseg wrote" in capsys.readouterr().err and (mine / "notes.txt").exists()
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(out)]) == 0
    assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(out), "--overwrite"]) == 0
    (tmp_path / "a-file").write_text("x")
    assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(tmp_path / "a-file")]) == 2
    assert "output is a file" in capsys.readouterr().err
    # a link to an earlier output, with --overwrite: refused naming the link (rmtree's own error named no path)
    (tmp_path / "link").symlink_to(out)
    kept = sorted(p.name for p in out.iterdir())
    assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(tmp_path / "link"),
                 "--overwrite"]) == 2
    assert f"{tmp_path / 'link'}: the output folder is a link" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == kept


def test_a_run_lock_that_is_a_link_is_refused_and_its_target_kept(tmp_path):
    from leafseg.training.checkpoints import lock_run_dir

    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(target)
    with pytest.raises(FileExistsError, match="not a plain file"):
        lock_run_dir(run)
    assert target.read_text() == "keep me"


# ------------------------------------------------------------------------------ pickles that would run code
class _Payload:
    """Unpickling this writes a marker file: any loader that lets it through runs code."""

    marker: Path = Path("/nonexistent")

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _crafted(path: Path, marker: Path) -> None:
    payload = _Payload()
    payload.marker = marker
    with open(path, "wb") as f:
        pickle.dump({"state_dict": payload}, f)


def test_resume_never_unpickles_code(tmp_path, synthetic, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, synthetic, "train.max_steps=2"))
    marker = tmp_path / "marker"
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl"):  # where accelerate pickles custom states
        _crafted(run / "checkpoint-last" / name, marker)
    with pytest.raises(ValueError, match="cannot resume"):
        train(tiny_config(run, synthetic, "train.max_steps=3"), resume=True)
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl"):
        (run / "checkpoint-last" / name).unlink()
    rng = run / "checkpoint-last" / "random_states_0.pkl"  # accelerate's own RNG state (dropout draws from it)
    _crafted(rng, marker)
    with pytest.raises(ValueError, match="random_states_0.pkl.*delete the file"):
        train(tiny_config(run, synthetic, "train.max_steps=3"), resume=True)
    rng.unlink()
    assert train(tiny_config(run, synthetic, "train.max_steps=4"), resume=True).step == 4
    assert "random_states_0.pkl is missing" in capsys.readouterr().out
    assert not marker.exists()


def test_weight_loaders_never_unpickle_code(tmp_path):
    from leafseg.conversion import load_checkpoint
    from leafseg.models.taef2 import TAEF2
    from leafseg.models.teachers import LiteMedSAMTeacher

    marker = tmp_path / "marker"
    bad = tmp_path / "bad.ckpt"
    _crafted(bad, marker)
    with pytest.raises(ValueError):
        load_checkpoint(bad)
    with pytest.raises(ValueError):
        TAEF2.from_taesd_weights(bad, bad)
    with pytest.raises(ValueError):
        LiteMedSAMTeacher(checkpoint=bad)
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "m", safe_serialization=False)  # .bin weights: pickles
    _crafted(tmp_path / "m" / "unet" / "diffusion_pytorch_model.bin", marker)
    with pytest.raises(ValueError):
        tiny_load(tmp_path / "m")
    assert not marker.exists()


def test_a_pickle_that_would_run_code_is_one_line_naming_the_file(tmp_path):
    """Wherever leafseg loads weights (TAEF2, LiteMedSAM, a DINOv2 folder, a saved model, a checkpoint to convert),
    a crafted pickle is refused in one line that names the file; torch's four paragraphs advised weights_only=False
    and, for the DINOv2 folder, named no file."""
    import transformers

    from leafseg.conversion import load_checkpoint
    from leafseg.models.taef2 import TAEF2
    from leafseg.models.teachers import DINOv2Teacher, LiteMedSAMTeacher
    from leafseg.pipelines import load_pipeline

    marker = tmp_path / "marker"
    bad = tmp_path / "bad.pth"
    _crafted(bad, marker)
    tiny_pipeline().save_pretrained(tmp_path / "m", safe_serialization=False)
    unet_bin = tmp_path / "m" / "unet" / "diffusion_pytorch_model.bin"
    _crafted(unet_bin, marker)
    dino = tmp_path / "dino"
    transformers.Dinov2Model(transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                       intermediate_size=64, patch_size=14, image_size=28)
                             ).save_pretrained(dino)
    for weights in dino.glob("*.safetensors"):  # transformers prefers them: leave the pickle alone in the folder
        weights.unlink()
    _crafted(dino / "pytorch_model.bin", marker)
    for load, path in ((lambda: TAEF2.from_taesd_weights(bad, bad), bad),
                       (lambda: LiteMedSAMTeacher(checkpoint=bad), bad),
                       (lambda: load_checkpoint(bad), bad),
                       (lambda: load_pipeline(tmp_path / "m", "cpu"), unet_bin),
                       (lambda: DINOv2Teacher(path=dino), dino / "pytorch_model.bin")):
        with pytest.raises(ValueError) as info:
            load()
        message = str(info.value)
        assert message.startswith(f"{path}: refused, loading it would execute code"), message
        assert "\n" not in message and "weights_only=False" not in message
    assert not marker.exists()


# ------------------------------------------------------------------------------------- a newcomer's first hour
def test_evaluation_does_not_change_the_checkpoint_hash(tmp_path, synthetic):
    from leafseg.evaluation import evaluate

    run = tmp_path / "run"
    train(tiny_config(run, synthetic, "train.max_steps=2"))
    first = evaluate(str(run / "model-best"), str(synthetic), "test", None, None)["summary"]["checkpoint_sha256"]
    second = evaluate(str(run / "model-best"), str(synthetic), "val", None, None)["summary"]["checkpoint_sha256"]
    assert first == second
    assert (run / "eval-model-best-test" / "summary.json").is_file()
    assert (run / "logs" / "history.csv").read_text().splitlines()[0].startswith("step,")


@pytest.mark.parametrize("image,ok", [
    (np.full((16, 16, 3), 200, np.uint8), True),
    (torch.full((3, 16, 16), 200, dtype=torch.uint8), True),
    (np.full((16, 16, 3), 0.5, np.float32), True),
    (np.full((16, 16, 3), 200.0, np.float32), False),
    (torch.full((3, 16, 16), 200.0), False),
    (np.full((16, 16, 3), 3, np.int64), False),
])
def test_pipeline_accepts_only_unambiguous_image_conventions(image, ok):
    pipe = tiny_pipeline()
    if ok:
        assert pipe(image).masks[0].shape == (16, 16)
    else:
        with pytest.raises(ValueError, match=r"\[0, 1\]|uint8"):
            pipe(image)


def test_autoencoder_path_never_comes_from_the_working_directory(tmp_path, monkeypatch):
    from leafseg.config import load_config
    from leafseg.training.leaf import autoencoder_path

    for name in ("LEAFSEG_SHARED", "LEAFSEG_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    for files in ("taef2", "cache/leafseg/weights/taef2"):  # in the working directory: never used
        (tmp_path / files).mkdir(parents=True)
        for name in ("taef2_encoder.pth", "taef2_decoder.pth"):
            (tmp_path / files / name).write_bytes(b"")
    ae = load_config("cpu", ["data.root=x"]).autoencoder
    assert autoencoder_path(ae) == tmp_path / "cache/leafseg/weights/taef2"  # the user's cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError, match="TAEF2's weights were not found .*github.com/madebyollin/taesd"):
        autoencoder_path(ae)
    monkeypatch.setenv("LEAFSEG_SHARED", str(tmp_path / "shared"))
    (tmp_path / "shared" / "weights").mkdir(parents=True)
    (tmp_path / "taef2").rename(tmp_path / "shared" / "weights" / "taef2")
    assert autoencoder_path(ae) == tmp_path / "shared/weights/taef2"
    monkeypatch.setenv("LEAFSEG_WEIGHTS", str(tmp_path / "cache/leafseg/weights"))  # the first place looked in
    assert autoencoder_path(ae) == tmp_path / "cache/leafseg/weights/taef2"


def test_taef2_files_that_are_not_the_published_ones_are_refused(tmp_path):
    from leafseg.models.autoencoder import load_autoencoder

    for name in ("taef2_encoder.pth", "taef2_decoder.pth"):
        (tmp_path / name).write_bytes(b"a truncated download")
    with pytest.raises(ValueError, match=r"taef2_encoder.pth: sha256 [0-9a-f]{64} is not the published TAEF2"):
        load_autoencoder("taef2", tmp_path)
    (tmp_path / "taef2_decoder.pth").unlink()
    with pytest.raises(FileNotFoundError, match="taef2_decoder.pth: not found"):
        load_autoencoder("taef2", tmp_path)


def test_cli_starts_without_torch_and_has_a_version():
    code = ("import sys, leafseg.cli as c; c.build_parser(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    out = subprocess.run([sys.executable, "-m", "leafseg.cli", "--version"], capture_output=True, text=True,
                         env={**os.environ})
    assert out.stdout.strip().startswith("leafseg ")


def test_package_root_exports_the_python_api(tmp_path):
    import leafseg

    tiny_pipeline().save_pretrained(tmp_path / "m")
    pipe = leafseg.LeafSegPipeline.from_pretrained(tmp_path / "m")
    out = pipe(np.zeros((20, 24, 3), np.uint8))
    assert out.masks[0].shape == (20, 24) and leafseg.__version__


def test_written_files_and_folders_follow_the_umask(tmp_path):
    """Atomic writes go through tempfile (0600 files, 0700 folders); what lands must have the user's usual
    permissions, or a colleague cannot read the masks, reports and models."""
    from leafseg.files import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "r.json")
        with atomic_dir(tmp_path / "model") as d:
            (d / "x.txt").write_text("x")
        assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
        assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755
        os.umask(0o077)
        write_json({"a": 2}, tmp_path / "private.json")
        assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_output_names_never_meet_even_across_case_and_suffix_tricks(tmp_path):
    from leafseg.data import list_images
    from leafseg.prediction import output_names

    files = [tmp_path / n for n in ("1.png", "1.jpg", "1_png.png", "x.png", "x.PNG", "y.png")]
    names = output_names(files)
    assert len({n.casefold() for n in names.values()}) == len(files)
    assert names[tmp_path / "y.png"] == "y" and names[tmp_path / "1.jpg"] == "1_jpg"
    # the names that belong to one input never go to another: x_png.png keeps x_png, x_png_2.png keeps x_png_2
    files = [tmp_path / n for n in ("x.png", "x.PNG", "x_png.png", "x_png_2.png")]
    names = output_names(files)
    assert names[tmp_path / "x_png.png"] == "x_png" and names[tmp_path / "x_png_2.png"] == "x_png_2"
    assert {names[tmp_path / "x.png"], names[tmp_path / "x.PNG"]}.isdisjoint({"x_png", "x_png_2"})
    for f in files:
        f.write_bytes(b"")
    os.mkfifo(tmp_path / "pipe.png")  # reading it would block forever
    assert (tmp_path / "pipe.png") not in list_images(tmp_path)


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "train.lr: Value 'abc' of type 'str' could not be converted to Float"),
    ("train.lr=0", "train.lr must be a finite number > 0, got 0.0"),
    ("train.lr=1e400", "train.lr must be a finite number > 0, got inf"),  # once passed, then NaN at step 2
    ("train.batch_size=0", "train.batch_size must be a whole number >= 1, got 0"),
    ("train.val_every=0", "train.val_every must be a whole number >= 1, got 0"),
    ("train.max_steps=0", "train.max_steps must be a whole number >= 1, got 0"),
    ("train.max_steps=2.5", "train.max_steps: Value '2.5' of type 'float' could not be converted to Integer"),
])
def test_wrong_train_numbers_are_named_before_any_work(tmp_path, synthetic, override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        train(tiny_config(tmp_path / "run", synthetic, override))
    assert not (tmp_path / "run").exists()


def test_a_run_config_with_a_python_tag_is_one_clear_error(tmp_path, capsys):
    model = _model(tmp_path)
    marker = tmp_path / "ran"
    (model.parent / "config.yaml").write_text(f"data: !!python/object/apply:os.system ['touch {marker}']\n")
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "masks").mkdir()
    assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "d"), "--split", "all"]) == 2
    err = capsys.readouterr().err
    assert "config.yaml: not a valid run configuration" in err and "Traceback" not in err
    assert not marker.exists()


_NAME_CHARS = "aAxX1_.-é"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(_NAME_CHARS, min_size=1, max_size=12).filter(lambda s: s.strip(".")),
                          st.sampled_from([".png", ".PNG", ".jpg", ".png.png", ".nii.gz", ""]),
                          st.integers(0, 1)), min_size=1, max_size=12))
def test_output_names_property(entries):
    """For any inputs: names unique across case, every output name within 255 bytes, an input whose stem no other
    input shares keeps it, and no input is given a name another input keeps as its own."""
    from leafseg.data import file_stem
    from leafseg.prediction import LONGEST_SUFFIX, output_names

    files = list(dict.fromkeys(Path("in") / (stem * (60 if long else 1) + ext) for stem, ext, long in entries))
    names = output_names(files)
    assert len({n.casefold() for n in names.values()}) == len(files)
    assert all(len(n.encode()) + LONGEST_SUFFIX <= 255 for n in names.values())
    stems = [file_stem(f).casefold() for f in files]
    kept = {names[f].casefold() for f, s in zip(files, stems) if stems.count(s) == 1}
    for f, s in zip(files, stems):
        if stems.count(s) == 1 and len(file_stem(f).encode()) + LONGEST_SUFFIX <= 255:
            assert names[f] == file_stem(f)
        elif stems.count(s) > 1:
            assert names[f].casefold() not in kept


def test_predict_writes_names_csv_and_survives_a_250_character_name(tmp_path, capsys):
    """A legal 250-character input name once stopped the whole predict at its overlay (name too long)."""
    model, inputs = _model(tmp_path), tmp_path / "in"
    inputs.mkdir()
    long = "p" * 250 + ".png"
    for name in (long, "x.png", "x.PNG"):
        Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(inputs / name)
    assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "named apart in the outputs" in printed
    rows = {r["input"]: r["output"] for r in csv.DictReader(open(tmp_path / "out" / "names.csv"))}
    assert len(rows) == 3 and len(set(rows.values())) == 3
    for output in rows.values():
        for suffix in ("_mask.png", "_overlay.png"):
            assert (tmp_path / "out" / f"{output}{suffix}").is_file()


def test_a_long_but_legal_file_name_is_written(tmp_path):
    from leafseg.files import write_text

    name = "x" * 240 + ".png"  # legal (<= 255 bytes); a temporary name that grows it would not be
    write_text("ok", tmp_path / name)
    assert (tmp_path / name).read_text() == "ok"


def test_a_model_missing_after_an_interrupted_swap_points_to_the_old_one(tmp_path):
    from leafseg.pipelines import load_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "model-best.old")  # killed between the two renames of the swap
    with pytest.raises(FileNotFoundError, match=r"model-best\.old holds the previous one .*--resume"):
        load_pipeline(tmp_path / "model-best", "cpu")


def test_exif_orientation_is_honoured_and_multi_page_files_refused(tmp_path):
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:5, :5] = 255  # a marked corner shows where the top-left went
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display", as phones write it
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=100)
    shown = D.load_image(tmp_path / "phone.jpg")
    assert shown.shape == (30, 20, 3) and shown[:5, -5:].mean() > 200  # displayed upright, as a viewer shows it
    # a mask drawn on the stored (unturned) pixels: the mismatch names the EXIF orientation that caused it
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / "phone.jpg", exif=exif, quality=100)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "masks" / "phone.png")
    with pytest.raises(ValueError, match=r"phone\.jpg is 20x30 but .*phone\.png is 30x20 after the EXIF orientation"):
        D.load_arrays(D.find_pairs(tmp_path), 16)
    pages = [Image.fromarray(pixels), Image.fromarray(255 - pixels)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(ValueError, match=r"stack\.tif: holds 2 pages/frames"):
        D.load_image(tmp_path / "stack.tif")


def test_a_model_index_naming_a_foreign_or_missing_module_is_one_error(tmp_path):
    from leafseg.pipelines import load_pipeline

    model = _model(tmp_path)
    index = json.loads((model / "model_index.json").read_text())
    for library, message in (("os", "comes from 'os'"), ("leafseg.models.nowhere", "which this leafseg version")):
        index["unet"] = [library, "UNet2DModel"]
        (model / "model_index.json").write_text(json.dumps(index))
        with pytest.raises(ValueError, match=re.escape(message)):
            load_pipeline(model, "cpu")


@pytest.mark.parametrize("part", ["teacher", "unet", "autoencoder"])
def test_a_crafted_weight_file_is_one_line_naming_it(tmp_path, synthetic, capsys, part):
    """Garbage where the teacher checkpoint, a pretrained UNet folder's or a diffusers autoencoder folder's weights
    should be: `leafseg train` stops with one line naming the file, no traceback, before any run folder exists."""
    from diffusers import AutoencoderKL
    from omegaconf import OmegaConf

    from leafseg.models.denoiser import build_unet
    from tiny import TINY_AE, TINY_UNET

    garbage = b"PK\x03\x04" + bytes(range(256)) * 4  # starts like a zip (torch.save's format), then nonsense
    if part == "teacher":
        bad = tmp_path / "lite_medsam.pth"
        bad.write_bytes(garbage)
        extra = [f"align.teacher_checkpoint={bad}"]
    elif part == "unet":
        build_unet(latent_channels=4, sample_size=4, **TINY_UNET).save_pretrained(tmp_path / "unet")
        bad = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
        bad.write_bytes(garbage)
        extra = [f"unet.pretrained={tmp_path / 'unet'}"]
    else:
        AutoencoderKL(**TINY_AE).save_pretrained(tmp_path / "ae")
        bad = tmp_path / "ae" / "diffusion_pytorch_model.safetensors"
        bad.write_bytes(garbage)
        extra = ["autoencoder.kind=diffusers", f"autoencoder.path={tmp_path / 'ae'}"]
    config = tmp_path / "config.yaml"
    OmegaConf.save(tiny_config(tmp_path / "run", synthetic, *extra), config)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(bad.parent) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_sigterm_during_predict_keeps_every_written_set_whole(tmp_path, capsys, monkeypatch):
    """SIGTERM once left hidden temporary files and a mask without its overlay; SIGINT printed a traceback. Now both
    end with one line, 'interrupted: N of M input(s) written', every written input has all its files, and no
    temporary file stays."""
    import signal

    from leafseg import prediction

    model, inputs = _model(tmp_path), tmp_path / "in"
    inputs.mkdir()
    for i in range(6):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(inputs / f"{i}.png")
    calls = {"n": 0}
    save = prediction.save_png

    def save_then_terminate(array, path):
        calls["n"] += 1
        if calls["n"] == 6:  # the third input's overlay: after its mask, before its overlay is in place
            os.kill(os.getpid(), signal.SIGTERM)
        return save(array, path)

    monkeypatch.setattr(prediction, "save_png", save_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(out),
                 "--batch-size", "2"]) == 130
    err = capsys.readouterr().err
    assert f"leafseg predict: interrupted: 2 of 6 input(s) written to {out}" in err and "Traceback" not in err
    files = sorted(p.name for p in out.iterdir())
    assert [f for f in files if "tmp" in f] == []
    assert files == [".leafseg-output", "0_mask.png", "0_overlay.png", "1_mask.png", "1_overlay.png", "names.csv"]
    assert signal.getsignal(signal.SIGTERM) == before  # the CLI put the previous handler back


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    """predict said '[Errno 27] File too large' naming no file; a checkpoint save said torch's 'enforce fail at
    inline_container.cc ... unexpected pos' and left its temporary folder. Both now name the file, suggest a full
    disk, remove what they had half-written and keep the last good checkpoint."""
    import errno

    model, inputs = _model(tmp_path), tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(inputs / "a.png")

    def full(self, fp, *args, **kwargs):
        raise OSError(errno.EFBIG, "File too large")

    with monkeypatch.context() as m:
        m.setattr(Image.Image, "save", full)
        assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"could not write {tmp_path / 'o' / 'a_mask.png'} (File too large; disk full?)" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [".leafseg-output", "names.csv"]


def test_a_checkpoint_that_cannot_be_written_keeps_the_last_good_one(tmp_path, synthetic, monkeypatch):
    from accelerate import Accelerator

    run = tmp_path / "run"
    train(tiny_config(run, synthetic, "train.max_steps=2", BITWISE))
    saved = Accelerator.save_state

    def disk_full(self, output_dir=None, **kwargs):
        saved(self, output_dir, **kwargs)  # written part-way, then the disk is full
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4352 vs 4240")

    monkeypatch.setattr(Accelerator, "save_state", disk_full)
    with pytest.raises(OSError) as info:
        train(tiny_config(run, synthetic, "train.max_steps=4", BITWISE), resume=True)
    message = str(info.value)
    assert f"could not write {run / 'checkpoint-last'}" in message and "disk full?" in message
    assert "the last good checkpoint" in message
    assert not (run / ".checkpoint-last.tmp").exists()
    state = json.loads((run / "checkpoint-last" / "trainer_state.json").read_text())
    assert state["step"] == 2


def test_inputs_left_out_are_listed_with_their_reason(tmp_path, capsys):
    """FIFOs, links that lead nowhere or in a circle, sub-folders and hidden images were left out in silence."""
    model, inputs = _model(tmp_path), tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(inputs / "a.png")
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(inputs / ".hidden.png")
    os.mkfifo(inputs / "pipe.png")
    (inputs / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (inputs / "loop.png").symlink_to(inputs / "loop.png")
    (inputs / "old").mkdir()
    (inputs / "notes.txt").write_text("not an input")
    assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "left out 5 entries" in out
    for line in (".hidden.png: a hidden file", "pipe.png: not a regular file", "gone.png: a link that leads nowhere",
                 "loop.png: a link that leads in a circle", "old: a folder that is not a DICOM series"):
        assert line in out, line
    assert "notes.txt" not in out and (tmp_path / "o" / "a_mask.png").is_file()


def test_a_failed_evaluation_keeps_the_previous_one(tmp_path, monkeypatch):
    """With --overwrite, a failing evaluation emptied the old results first and left half its overlays."""
    import importlib

    ev = importlib.import_module("leafseg.evaluation.evaluate")  # the module (the package exports the function)

    model, data = _model(tmp_path), tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(data / "images" / f"{i}.png")
        mask = np.zeros((20, 30), np.uint8)
        mask[5:10, 5:10] = 255
        Image.fromarray(mask).save(data / "masks" / f"{i}.png")
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "all", "--output", str(out)]) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def broken(*args, **kwargs):
        raise OSError(28, "could not write report.md (No space left on device; disk full?)")

    monkeypatch.setattr(ev, "report_markdown", broken)
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--split", "all", "--output", str(out),
                 "--overwrite"]) == 2
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # the previous results, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ev")] == []  # no staging folder left
