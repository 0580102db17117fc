
import json
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from leafseg.config import load_config
from leafseg.pipelines import LeafSegPipeline
from leafseg.data import flip
from leafseg.models.alignment import feature_map_to_tokens
from leafseg.training import train
from leafseg.training.caches import mirror_tokens
from leafseg.data import RowFile
from leafseg.data.loader import batch_indices
from leafseg.training.clock import combine_timings
from tiny import BITWISE, saved_weights, tiny_config


def test_batches_are_seeded_sharded_and_cover_each_epoch():
    a = [batch_indices(10, 2, world=2, rank=r, step=s, seed=0).tolist() for s in range(2) for r in range(2)]
    flat = [i for chunk in a for i in chunk]
    assert len(flat) == len(set(flat)) == 8  # no overlap within an epoch, ranks disjoint
    assert batch_indices(10, 2, 2, 1, 5, 0).tolist() == batch_indices(10, 2, 2, 1, 5, 0).tolist()
    assert batch_indices(3, 4, 1, 0, 0, 0).numel() == 4  # fewer images than a batch: wraps around


@pytest.mark.parametrize("h,v", [(True, False), (False, True), (True, True)])
def test_mirror_tokens_match_flipped_feature_map(h, v):
    fmap = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(mirror_tokens(feature_map_to_tokens(fmap), 4, h, v),
                               feature_map_to_tokens(flip(fmap, h, v)))


def test_train_exports_pipeline_without_training_only_parts(tmp_path, synthetic):
    result = train(tiny_config(tmp_path / "run", synthetic))
    run = result.run_dir
    assert result.step == 4 and result.best_step in (2, 4)
    for name in ("model-best", "model-last", "checkpoint-last", "split.json", "config.yaml"):
        assert (run / name).exists(), name
    logged = [h for h in result.history if "loss" in h]
    assert len(logged) == 4 and all("loss_align" in h for h in logged)
    assert any(e.name.startswith("events.out.tfevents") for e in (run / "logs").rglob("*"))  # TensorBoard
    assert (run / "logs" / "curves.png").stat().st_size > 1000  # loss / val-Dice figure
    timings = json.loads((run / "logs" / "timings.json").read_text())  # where the wall time went
    assert timings["validations"] == 2 and timings["steps"] == {"from": 0, "to": 4}
    assert timings["checkpoints"] >= 2 and timings["frozen_targets_s"] > 0
    parts = sum(timings[k] for k in ("steps_s", "validation_s", "checkpoints_s"))
    assert timings["before_first_step_s"] >= timings["data_s"] + timings["frozen_targets_s"]
    assert parts + timings["before_first_step_s"] == pytest.approx(timings["total_s"], abs=0.3)
    saved = {k for f in (run / "model-best").rglob("*.safetensors") for k in load_file(f)}
    assert not any("projector" in k or "teacher" in k for k in saved)
    pipe = LeafSegPipeline.from_pretrained(run / "model-best", local_files_only=True)
    assert sorted(pipe.components) == ["autoencoder", "image_encoder", "scheduler", "unet"]
    out = pipe(torch.rand(3, 50, 40))
    assert out.masks[0].shape == (50, 40)


def test_existing_run_is_not_overwritten(tmp_path, synthetic):
    cfg = tiny_config(tmp_path / "run", synthetic, "train.max_steps=2")
    train(cfg)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)


def test_resume_continues_exactly(tmp_path, synthetic):
    straight = train(tiny_config(tmp_path / "a", synthetic, "train.max_steps=4", BITWISE))
    train(tiny_config(tmp_path / "b", synthetic, "train.max_steps=2", BITWISE))
    resumed = train(tiny_config(tmp_path / "b", synthetic, "train.max_steps=4", BITWISE), resume=True)
    assert resumed.step == 4
    a, b = saved_weights(straight.run_dir), saved_weights(resumed.run_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    la = [h["loss"] for h in straight.history if "loss" in h]
    lb = [h["loss"] for h in resumed.history if "loss" in h]
    assert la == lb
    timings = json.loads((resumed.run_dir / "logs" / "timings.json").read_text())  # both processes' time
    first, second = timings["segments"]
    assert first["steps"] == {"from": 0, "to": 2} and second["steps"] == {"from": 2, "to": 4}
    assert timings["steps"] == {"from": 0, "to": 4} and timings["validations"] == 2  # tiny: val every 2 steps
    assert timings["total_s"] == pytest.approx(first["total_s"] + second["total_s"], abs=0.11)


def test_a_trainer_subclass_overrides_hooks_and_keeps_the_numbers(tmp_path, synthetic):
    """The loop's steps are methods a subclass replaces (nnU-Net's trainer hooks): one that only watches gets the
    weights of the plain trainer, bit for bit, and is called where the handlers say."""
    from leafseg.training import Trainer

    calls = []

    class Watching(Trainer):
        def train_step(self, batch, generator):
            calls.append(("step", self.state["step"]))
            return super().train_step(batch, generator)

        def validate(self):
            calls.append(("validate", self.state["step"]))
            return super().validate()

        def on_train_end(self, seen):
            calls.append(("end", self.state["step"]))
            return super().on_train_end(seen)

    plain = train(tiny_config(tmp_path / "a", synthetic, BITWISE))
    watched = train(tiny_config(tmp_path / "b", synthetic, BITWISE), trainer_class=Watching)
    assert calls == [("step", 0), ("step", 1), ("validate", 2), ("step", 2), ("step", 3), ("validate", 4),
                     ("end", 4)]
    a, b = saved_weights(plain.run_dir), saved_weights(watched.run_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_combined_timings_sum_the_processes_of_a_resumed_run():
    a = {"total_s": 10.0, "data_s": 1.0, "validations": 1, "steps": {"from": 0, "to": 2}}
    b = {"total_s": 5.5, "data_s": 0.5, "validations": 2, "steps": {"from": 2, "to": 6}}
    assert combine_timings([a]) is a
    assert combine_timings([a, b]) == {"total_s": 15.5, "data_s": 1.5, "validations": 3,
                                       "steps": {"from": 0, "to": 6}, "segments": [a, b]}


def test_resume_refuses_a_changed_recipe_and_records_allowed_changes(tmp_path, synthetic, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, synthetic, "train.max_steps=2", "train.lr_schedule=cosine"))
    # the optimiser state of the checkpoint would silently overwrite a new lr: refused, naming key and values
    with pytest.raises(ValueError, match=r"train\.lr, unet\.dropout .*train\.lr: 0\.001 in the run, 0\.01 now"):
        train(tiny_config(run, synthetic, "train.max_steps=3", "train.lr_schedule=cosine", "train.lr=1e-2",
                          "unet.dropout=0.5"), resume=True)
    assert load_config(run / "config.yaml").train.max_steps == 2  # nothing written by the refused resume
    capsys.readouterr()
    resumed = train(tiny_config(run, synthetic, "train.max_steps=3", "train.lr_schedule=cosine"), resume=True)
    assert resumed.step == 3  # the folder's lock was released by the refusal
    out = capsys.readouterr().out
    assert "resuming with train.max_steps = 3 (the run had 2)" in out
    assert "LR follows the 3-step curve" in out
    assert load_config(run / "config.yaml").train.max_steps == 3  # config.yaml says what the run was resumed with


def test_resume_refuses_a_run_that_used_a_removed_option(tmp_path, synthetic):
    from leafseg.training.checkpoints import check_resume_config

    run = tmp_path / "run"
    run.mkdir()
    cfg = tiny_config(run, synthetic)
    (run / "config.yaml").write_text("data:\n  augment:\n    overlay: 0.0\n")  # off: the same run as today's
    assert check_resume_config(run, cfg) == []
    (run / "config.yaml").write_text("data:\n  augment:\n    overlay: 0.3\n")
    with pytest.raises(ValueError, match=r"data\.augment\.overlay in .*config\.yaml: this option was removed.*"
                                         r"cannot be resumed"):
        check_resume_config(run, cfg)


def test_mirrored_teacher_tokens_and_no_cache(tmp_path, synthetic):
    result = train(tiny_config(tmp_path / "a", synthetic, "align.flip_tokens=mirror", "train.max_steps=2"))
    assert all("loss_align" in h for h in result.history if "loss" in h)
    result = train(tiny_config(tmp_path / "b", synthetic, "align.cache=false", "train.max_steps=2"))
    assert not list((tmp_path / "b" / "cache").glob("teacher-*"))


def test_alignment_off_and_epsilon_target(tmp_path, synthetic):
    result = train(tiny_config(tmp_path / "run", synthetic, "align.enabled=false",
                               "diffusion.prediction_type=epsilon", "loss.kind=l2", "train.max_steps=2"))
    assert all("loss_align" not in h for h in result.history)
    pipe = LeafSegPipeline.from_pretrained(result.run_dir / "model-best", local_files_only=True)
    assert pipe.prediction_type == "epsilon"


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="nonexistent"):
        load_config(None, ["train.nonexistent=1"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    assert load_config("cpu-small").data.resolution == 128


def test_validation_at_start_and_shared_cache_dir(tmp_path, synthetic):
    shared_cache = tmp_path / "cache"
    a = train(tiny_config(tmp_path / "a", synthetic, "train.val_at_start=true", f"run.cache_dir={shared_cache}"))
    val_steps = [h["step"] for h in a.history if "val_dice" in h]
    assert val_steps == [0, 2, 4]
    cached_files = sorted(p.name for p in shared_cache.iterdir())
    assert any(n.startswith("mask-latents-") for n in cached_files) and any(n.startswith("teacher-") for n in
                                                                            cached_files)
    assert not (tmp_path / "a" / "cache").exists()
    b = train(tiny_config(tmp_path / "b", synthetic, f"run.cache_dir={shared_cache}", "run.seed=3"))
    assert sorted(p.name for p in shared_cache.iterdir()) == cached_files  # reused, nothing recomputed
    assert b.step == 4


def test_onnx_cache_backend_gives_the_torch_caches(tmp_path, synthetic):
    """run.cache_backend=onnx computes the same mask latents and teacher tokens as torch (float rounding), in
    differently named files, so a shared cache folder never mixes them; training then runs on them."""
    pytest.importorskip("onnxruntime")
    caches = {}
    for backend in ("torch", "onnx"):
        result = train(tiny_config(tmp_path / backend, synthetic, f"run.cache_backend={backend}", "run.device=cpu",
                                   "train.max_steps=2", "align.flip_tokens=recompute"))  # ONNX Runtime: CPU only
        assert result.step == 2
        caches[backend] = {p.name.split("-")[0]: (p.name, torch.from_numpy(RowFile(p).read_range(0, 10**9)))
                           for p in sorted((tmp_path / backend / "cache").glob("*.json"))}
    assert sorted(caches["torch"]) == sorted(caches["onnx"]) == ["mask", "teacher"]
    for kind in ("mask", "teacher"):
        (torch_name, a), (onnx_name, b) = caches["torch"][kind], caches["onnx"][kind]
        assert torch_name != onnx_name and a.shape == b.shape and a.dtype == b.dtype
        scale = a.float().abs().max()
        tolerance = 2e-3 if kind == "teacher" else 1e-4  # tokens are stored in float16
        torch.testing.assert_close(b.float() / scale, a.float() / scale, rtol=0, atol=tolerance)


def test_cache_backend_choice_and_fallbacks(monkeypatch):
    import sys

    from leafseg.training.caches import cache_backend

    with pytest.raises(ValueError, match="run.cache_backend"):
        cache_backend("openvino", "cpu")
    assert cache_backend("torch", "cpu") == "torch"
    said = []
    assert cache_backend("onnx", "cuda", said.append) == "torch"  # ONNX Runtime's CPU provider only
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert cache_backend("onnx", "cpu", said.append) == "torch"
    assert "CPU only" in said[0] and "not installed" in said[1]  # each fall-back says why (on the main rank)


def test_target_cache_names_tell_backend_and_device_apart():
    """A run.cache_dir shared by a GPU and a CPU job keeps their targets apart (CUDA convolutions run in TF32), and
    torch on the CPU keeps the names caches had before backend and device entered them (no recomputation)."""
    from leafseg.training.caches import cache_key, target_cache_key

    parts = ("root", "cvc-clinicdb", ["a", "b"], [[False, False]], 128, {"kind": "taef2"}, 1.0)
    cpu = target_cache_key(*parts, backend="torch", device="cpu")
    assert cpu == cache_key(*parts) == target_cache_key(*parts, backend="torch", device=torch.device("cpu"))
    others = {target_cache_key(*parts, backend="onnx", device="cpu"),
              target_cache_key(*parts, backend="torch", device="cuda"),
              target_cache_key(*parts, backend="torch", device="mps")}
    assert len(others) == 3 and cpu not in others
    assert target_cache_key(*parts, backend="torch", device="cuda:1") == target_cache_key(
        *parts, backend="torch", device="cuda:0")  # the device type matters, not which card


def test_onnx_function_takes_any_batch_and_names_a_wrong_shape():
    pytest.importorskip("onnxruntime")
    from leafseg.pipelines.onnx import OnnxFunction
    from leafseg.training.caches import cache_backend

    assert cache_backend("onnx", "cpu") == "onnx"
    f = OnnxFunction(torch.nn.Conv2d(3, 2, 3), torch.zeros(1, 3, 8, 8))
    assert f(torch.zeros(5, 3, 8, 8)).shape == (5, 2, 6, 6)  # any batch size
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 8\)"):
        f(torch.zeros(1, 3, 16, 16))


def test_cache_estimate_leaves_out_the_first_batchs_warm_up(monkeypatch, capsys):
    """The first batch carries the warm-up (kernel set-up, on CUDA most of a small cache): the printed estimate
    comes from the second batch's rate, so here it says 18 s (the true total), not the first batch's 200 s."""
    from leafseg.training import caches

    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(caches, "time", SimpleNamespace(time=lambda: clock.now))

    def fn(x):
        clock.now += 10.0 if clock.now == 0 else 0.4
        return x.mean(dim=(2, 3))

    images, parts = torch.zeros(40, 3, 4, 4, dtype=torch.uint8), []
    caches.cache_rows(caches.flipped_inputs(fn, [(False, False), (True, False)], "cpu"), lambda a, b: images[a:b],
                      40, 4, "mask latents", 2, parts.append)
    out = torch.cat(parts)
    assert out.shape == (40, 2, 3) and clock.now == pytest.approx(17.6)
    said = capsys.readouterr().out
    assert "mask latents: 40 images x 2 pass(es) = 80 forward passes, about 18 s" in said
    assert "the first took 10.4 s" in said  # the first chunk: both flips of its 4 images


def test_run_device_choice(monkeypatch):
    """run.device: cpu trains on the CPU even where a GPU is visible (and then auto precision is bf16 only where the
    CPU has bf16 units), cuda refuses to fall back silently, anything else is named in the error."""
    from leafseg.training.run_setup import resolve_mixed_precision, use_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert use_cuda("auto") and use_cuda("cuda") and not use_cuda("cpu")
    assert resolve_mixed_precision("auto", cuda=True) == "bf16"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)  # a CPU without bf16 units
    assert resolve_mixed_precision("auto", cuda=False) == "no"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # with them: bf16 autocast
    assert resolve_mixed_precision("auto", cuda=False) == "bf16"
    assert resolve_mixed_precision(False, cuda=True) == "no"  # YAML's unquoted `no`
    with pytest.raises(ValueError, match="run.device must be auto, cpu or cuda, got 'gpu'"):
        use_cuda("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not use_cuda("auto") and not use_cuda("cpu")
    assert resolve_mixed_precision("auto") == "bf16"  # the CPU, with the bf16 units set above
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_mixed_precision("auto") == "no"
    with pytest.raises(ValueError, match="run.device=cuda but torch sees no CUDA device"):
        use_cuda("cuda")


def test_run_device_may_change_on_resume(tmp_path, synthetic, capsys):
    run = tmp_path / "run"
    train(tiny_config(run, synthetic, "train.max_steps=2", "run.device=cpu"))
    said = f"(batch 2 x 1 process(es)) on cpu in fp32 ({torch.get_num_threads()} thread(s))"
    assert said in capsys.readouterr().out  # where and how it trains, said before it starts
    resumed = train(tiny_config(run, synthetic, "train.max_steps=3", "run.device=auto"), resume=True)
    assert resumed.step == 3
    assert OmegaConf.load(run / "config.yaml").run.device == "auto"  # recorded as resumed


def test_a_second_training_in_the_same_process_may_change_precision(tmp_path, synthetic):
    """accelerate keeps one device and precision per process; leafseg starts each single-process run afresh, so a
    notebook (or this suite on a GPU machine, with run.device=cpu tests among CUDA ones) can train twice."""
    train(tiny_config(tmp_path / "fp32", synthetic, "train.max_steps=1", "run.device=cpu"))
    result = train(tiny_config(tmp_path / "bf16", synthetic, "train.max_steps=1", "run.device=cpu",
                               "train.mixed_precision=bf16", "train.val_every=100"))
    assert result.step == 1


def test_a_config_builds_on_a_packaged_recipe(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: cpu\ntrain:\n  max_steps: 123\n")
    cfg = load_config(mine)
    assert cfg.train.max_steps == 123 and cfg.data.resolution == 128 and cfg.train.lr_schedule == "cosine"
    (tmp_path / "child.yaml").write_text("base: mine.yaml\ntrain:\n  lr: 1.0e-3\n")  # a path beside the file
    child = load_config(tmp_path / "child.yaml")
    assert child.train.lr == 1e-3 and child.train.max_steps == 123 and child.data.resolution == 128
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="circle"):
        load_config(tmp_path / "a.yaml")


def test_model_card_names_the_autoencoder_folder_it_trained_with(tmp_path, monkeypatch):
    """A TAEF2 folder found without autoencoder.path is named on the card (not `None`); kl is leafseg's own."""
    from leafseg.training.model_card import model_card

    monkeypatch.setenv("LEAFSEG_SHARED", str(tmp_path / "shared"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LEAFSEG_WEIGHTS", raising=False)
    (tmp_path / "shared" / "weights" / "taef2").mkdir(parents=True)
    for name in ("taef2_encoder.pth", "taef2_decoder.pth"):
        (tmp_path / "shared" / "weights" / "taef2" / name).write_bytes(b"")
    cfg = tiny_config(tmp_path / "run", tmp_path / "data", "autoencoder.kind=taef2", "autoencoder.path=null")
    card = model_card(cfg, {"step": 3, "best_val_dice": 0.5, "best_step": 3}, "ab12", "best")
    assert f"taef2 (`{(tmp_path / 'shared' / 'weights' / 'taef2').resolve()}`)" in card and "None" not in card
    monkeypatch.delenv("LEAFSEG_SHARED")
    assert "taef2 (folder not set)" in model_card(cfg, {"step": 3}, None, "best")
    assert "kl (built by leafseg)" in model_card(tiny_config(tmp_path / "run", tmp_path / "data"), {"step": 3},
                                                 None, "best")


def test_a_run_writes_its_log_file_and_a_resume_appends(tmp_path, synthetic, capsys):
    """RUN/logs/train.log: the command and versions, every line the run printed (plan, validations, timings), and
    why a run stopped; the console shows the same lines."""
    import leafseg

    result = train(tiny_config(tmp_path / "run", synthetic, "train.max_steps=2"))
    log = (result.run_dir / "logs" / "train.log").read_text()
    out = capsys.readouterr().out
    assert f"leafseg {leafseg.__version__}, python" in log.splitlines()[0]
    for line in ("step 2: val Dice", "masks: ", "wall "):
        assert line in log and line in out
    train(tiny_config(tmp_path / "run", synthetic, "train.max_steps=4"), resume=True)
    log = (result.run_dir / "logs" / "train.log").read_text()
    assert log.count("leafseg " + leafseg.__version__ + ", python") >= 2 and "step 4: val Dice" in log
    with pytest.raises(FloatingPointError):
        train(tiny_config(tmp_path / "nan", synthetic, "train.lr=1e30", "train.grad_clip=0", "train.warmup_steps=0",
                          "train.max_steps=40", "train.val_every=100"))
    stopped = (tmp_path / "nan" / "logs" / "train.log").read_text()
    assert "stopped: FloatingPointError: non-finite training loss" in stopped


def test_model_card_carries_hub_metadata(tmp_path):
    """The card opens with YAML that huggingface_hub reads back: licence, library, tags, datasets, and the val Dice
    as the model-index result (split val, never test); a peer's card does not offer LeafSegPipeline."""
    from huggingface_hub import ModelCard

    from leafseg.training.model_card import model_card

    cfg = tiny_config(tmp_path / "run", tmp_path / "cvc-data")
    card = ModelCard(model_card(cfg, {"step": 3, "best_val_dice": 0.61234, "best_step": 3}, "ab12", "best"))
    data = card.data.to_dict()
    assert data["library_name"] == "leafseg" and data["license"] == "other" and data["datasets"] == ["cvc-data"]
    assert {"image-segmentation", "leaf"} <= set(data["tags"])
    result = card.data.eval_results[0]
    assert (result.metric_type, result.metric_value, result.dataset_split) == ("dice", 0.6123, "val")
    assert card.text.startswith("\n# leafseg model (LEAF, best)") and "LeafSegPipeline.from_pretrained" in card.text
    peer = ModelCard(model_card(tiny_config(tmp_path / "run", tmp_path / "d", "method=basicunet"), {"step": 3},
                                None, "last"))
    assert "LeafSegPipeline" not in peer.text and peer.data.eval_results is None and "basicunet" in peer.data.tags
