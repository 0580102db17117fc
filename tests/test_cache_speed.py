"""experiments/speed/cache_speed.py keeps running: the start-up caches' functions timed on the CPU, one row per part."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("cache_speed", Path(__file__).parents[1] / "experiments" /
                                              "speed" / "cache_speed.py")
cache_speed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cache_speed)


def test_mask_and_teacher_rows(taef2_dir, monkeypatch, capsys):
    monkeypatch.setattr(cache_speed, "SHARED", taef2_dir.parents[1])
    rows = cache_speed.main(["--backend", "torch", "--teacher-size", "32", "--teacher-layer", "stage1",
                             "--batch", "1", "--repeats", "1", "--train-images", "10"])
    assert [r["part"] for r in rows] == ["mask latents (taef2)", "teacher lite_medsam stage1 @ 32 px"]
    assert rows[0]["passes"] == 40 and rows[1]["passes"] == 10  # masks for 4 flips, mirrored teacher tokens once
    assert all(r["s_per_image"] > 0 and r["backend"] == "torch" for r in rows)
    assert "| mask latents (taef2) | torch |" in capsys.readouterr().out


def test_a_backend_asked_twice_is_timed_once(taef2_dir, monkeypatch):
    """As when onnx falls back to torch without onnxruntime: the resolved list keeps each backend once."""
    monkeypatch.setattr(cache_speed, "SHARED", taef2_dir.parents[1])
    rows = cache_speed.main(["--backend", "torch", "torch", "--no-masks", "--teacher-size", "32", "--teacher-layer",
                             "stage1", "--batch", "1", "--repeats", "1", "--train-images", "10"])
    assert [(r["part"], r["backend"]) for r in rows] == [("teacher lite_medsam stage1 @ 32 px", "torch")]
