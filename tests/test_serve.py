"""The parts of ``leafseg serve`` that need no browser: the command's lazy import of gradio, several uploads as one
DICOM series (or a clear refusal), the colour-bar pictures, and the views of a volume's slices."""

from __future__ import annotations

import builtins
import subprocess
import sys

import numpy as np
import pytest

from leafseg import app
from leafseg.prediction import Segmentation


def test_leafseg_help_and_serve_help_do_not_import_gradio():
    code = ("import sys; from leafseg.cli import build_parser; p = build_parser()\n"
            "try:\n p.parse_args(['serve', '--help'])\nexcept SystemExit: pass\n"
            "assert 'gradio' not in sys.modules, 'gradio imported by the parser'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_without_the_app_extra_serve_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_gradio(name, *args, **kwargs):
        if name == "gradio":
            raise ImportError("No module named 'gradio'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    with pytest.raises(SystemExit, match=r"pip install 'leafseg\[app\]'"):
        app._import_gradio()


def test_several_uploads_must_be_one_dicom_series(tmp_path):
    from PIL import Image

    files = []
    for k in range(2):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / f"{k}.png")
        files.append(str(tmp_path / f"{k}.png"))
    assert app.input_path(files[:1], tmp_path / "work") == tmp_path / "0.png"
    with pytest.raises(ValueError, match=r"2 files \(0.png, 1.png\): several files must be the slices of one DICOM"):
        app.input_path(files, tmp_path / "work")
    with pytest.raises(ValueError, match="no file"):
        app.input_path([], tmp_path / "work")


def test_a_dicom_series_uploaded_file_by_file_is_read_as_one_volume(tmp_path):
    from test_volumes import _dicom_series

    from leafseg import data as D

    _dicom_series(tmp_path / "upload", np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4))
    files = [str(f) for f in sorted((tmp_path / "upload").iterdir())]
    folder = app.input_path(files, tmp_path / "work")
    assert len(files) == 4 and D.read_volume(folder).array.shape == (6, 5, 4)


def test_views_draw_each_slice_with_colour_bars():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (20, 30, 3), dtype=np.uint8) for _ in range(2)]
    masks = [np.zeros((20, 30), bool), np.ones((20, 30), bool)]
    probabilities = [np.full((20, 30), 0.2, np.float32), np.full((20, 30), 0.9, np.float32)]
    seg = Segmentation(images, masks, probabilities, [p / 4 for p in probabilities])
    picture, probability, uncertainty = app.views(seg, 1)
    assert picture.shape == (20, 30, 3) and not np.array_equal(picture, images[1])  # the mask is drawn
    assert probability.ndim == 3 and probability.shape[-1] == 3 and probability.shape[1] > probability.shape[0]
    assert uncertainty is not None and uncertainty.shape == probability.shape
    assert app.views(Segmentation(images[:1], masks[:1], probabilities[:1], None), 5)[2] is None


def test_the_page_says_what_the_model_finds_its_data_its_scores_and_research_use(tmp_path):
    import json

    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from leafseg.evaluation.evaluate import model_digest
    from tiny import tiny_pipeline

    pipe = tiny_pipeline(resolution=32)
    model = tmp_path / "run" / "model-best"
    pipe.save_pretrained(model)
    bare = app.model_description(model, pipe)
    assert "not recorded (no model card)" in bare and "no evaluation found" in bare
    assert "Research use only: not for diagnosis" in bare

    data = ModelCardData(datasets=["cvc-clinicdb"], model_name="leafseg-leaf", eval_results=[EvalResult(
        task_type="image-segmentation", dataset_type="cvc-clinicdb", dataset_name="cvc-clinicdb", dataset_split="val",
        metric_type="dice", metric_value=0.8525)])
    ModelCard(f"---\n{data.to_yaml()}\n---\n# card\n").save(model / "README.md")
    dice = {"mean": 0.8661, "ci_low": 0.83, "ci_high": 0.9}

    def evaluation(name, digest, n, **metrics):
        folder = model.parent / name
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({
            "model": str(model), "checkpoint_sha256": digest, "data": f"/data/{name}", "split": "test",
            "n_images": n, "metrics": {"dice": dice, **metrics}}))

    evaluation("eval-cvc-test", model_digest(model), 122)
    evaluation("eval-other-model", "0" * 64, 50)  # another model's: not this one's score
    evaluation("eval-negatives", model_digest(model), 40, empty={"gt_empty": 40, "both_empty": 31})
    text = app.model_description(model, pipe)
    assert "**Trained on**: cvc-clinicdb." in text and "one structure" in text
    assert "val Dice 0.853" in text and "eval-cvc-test test (122 images): Dice 0.866 [0.830, 0.900]" in text
    assert "31 of 40 frames without it left empty" in text and "eval-other-model" not in text
    assert "orange-red" in app.overlay_legend(pipe)
