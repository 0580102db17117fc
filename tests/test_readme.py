"""The README's quick start as written: its config snippet, every ``leafseg`` command of its shell snippets and its
Python snippet, in that order, on a folder of 40 real CVC-ClinicDB frames (PNG images and masks) and a new image.

The only change to what a user types: the test appends a few ``train`` keys to the README's config, so that the
recipe stops after a handful of steps instead of its hour (the commands themselves run as printed)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from conftest import require_shared
from leafseg.cli import main

pytestmark = pytest.mark.slow

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
SHORT_RUN = """
train:
  max_steps: 6
  val_every: 3
  checkpoint_every: 3
  log_every: 3
  warmup_steps: 2
  time_budget_min: null
"""


def _snippets(language: str) -> list[str]:
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", README, flags=re.DOTALL) if lang == language]


def test_the_readme_quick_start_runs_as_written(tmp_path, monkeypatch):
    shared = require_shared("data/cvc-clinicdb/images", "weights/taef2/taef2_encoder.pth")
    cvc = shared / "data" / "cvc-clinicdb"
    monkeypatch.chdir(tmp_path)
    for sub in ("images", "masks"):
        (tmp_path / "my-data" / sub).mkdir(parents=True)
        for k in range(1, 41):
            shutil.copy(cvc / sub / f"{k}.png", tmp_path / "my-data" / sub / f"case{k:03d}.png")
    (tmp_path / "new-images").mkdir()
    shutil.copy(cvc / "images" / "300.png", tmp_path / "new-images" / "case001.png")

    [config] = [s for s in _snippets("yaml") if s.startswith("base:")]
    assert "/path/to/taef2" in config, "the README's config no longer says where TAEF2 goes"
    (tmp_path / "my-config.yaml").write_text(config.replace("/path/to/taef2", str(shared / "weights" / "taef2"))
                                             + SHORT_RUN)

    commands = [line.split("#")[0].strip() for block in _snippets("bash") for line in block.splitlines()
                if line.startswith("leafseg ")]
    assert [c.split()[1] for c in commands] == ["train", "train", "evaluate", "predict"], commands
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
    run = tmp_path / "runs" / "my-run"
    assert (run / "split.json").is_file() and (run / "model-best" / "model_index.json").is_file()
    assert (run / "eval-model-best-test" / "report.md").is_file()
    assert (tmp_path / "predictions" / "case001_mask.png").is_file()

    [python] = _snippets("python")
    scope: dict = {}
    exec(compile(python, "README.md (Python)", "exec"), scope)  # noqa: S102 - the README's own snippet
    out = scope["out"]
    assert out.masks[0].shape == (288, 384) and out.masks[0].dtype == bool


def test_without_taef2_the_readme_says_what_is_missing_and_the_demo_autoencoder_runs_it(tmp_path, monkeypatch,
                                                                                          capsys):
    """A newcomer with the clone alone (no shared folder, no TAEF2 in the cache): the README's config stops before
    any work with the place to put TAEF2; with the demo's fitted mask autoencoder instead (docs/pretrained.md) the
    same commands run on a folder of PNGs (the demo's synthetic images)."""
    import numpy as np
    import torch

    from leafseg.demo import fit_mask_autoencoder, make_synthetic_dataset

    for name in ("LEAFSEG_SHARED", "LEAFSEG_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    data = make_synthetic_dataset(tmp_path / "my-data", n=30, seed=0)
    (tmp_path / "new-images").mkdir()
    shutil.copy(sorted((data / "images").iterdir())[0], tmp_path / "new-images" / "case001.png")
    [config] = [s for s in _snippets("yaml") if s.startswith("base:")]
    commands = [line.split("#")[0].strip() for block in _snippets("bash") for line in block.splitlines()
                if line.startswith("leafseg ")]

    (tmp_path / "my-config.yaml").write_text(config.replace("/path/to/taef2", "null") + SHORT_RUN)
    assert main(shlex.split(commands[0])[1:]) != 0
    said = capsys.readouterr().err
    assert "TAEF2's weights were not found" in said and "empty-cache/leafseg/weights/taef2" in said
    assert not (tmp_path / "runs").exists()  # refused before any work

    from PIL import Image

    masks = torch.from_numpy(np.stack([np.asarray(Image.open(f)) > 0 for f in sorted((data / "masks").iterdir())]))
    fit_mask_autoencoder(masks, tmp_path / "leafseg-demo" / "mask-autoencoder", steps=20)
    demo_autoencoder = "autoencoder:\n  kind: diffusers\n  path: leafseg-demo/mask-autoencoder\n"
    (tmp_path / "my-config.yaml").write_text(
        re.sub(r"autoencoder:\n  path: .*\n", demo_autoencoder, config) + SHORT_RUN)
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
    assert (tmp_path / "predictions" / "case001_mask.png").is_file()
