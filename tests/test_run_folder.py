"""The run folder rule of `leafseg train`: new, empty, or a leafseg run; never the data, inside it, a link or a folder
of the user's own files; --resume only into a run. Each refusal comes before anything is written."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from leafseg.cli import main
from tiny import tiny_config


@pytest.fixture
def config(tmp_path, synthetic):
    path = tmp_path / "tiny.yaml"
    OmegaConf.save(tiny_config(tmp_path / "unused", synthetic), path)
    return path


def train(config, output, *extra):
    return main(["train", "--config", str(config), "--output", str(output), *extra])


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_dataset_root_or_a_folder_inside_it_is_refused(config, synthetic, capsys):
    before = snapshot(synthetic)
    assert train(config, synthetic) == 2
    assert "would be, hold or lie inside the dataset" in capsys.readouterr().err
    assert train(config, synthetic / "images" / "run") == 2
    assert "would be, hold or lie inside the dataset" in capsys.readouterr().err
    assert snapshot(synthetic) == before and not (synthetic / "images" / "run").exists()


def test_a_folder_of_the_users_own_files_is_left_alone(config, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own settings\n")
    (mine / "split.json").write_text('{"train": ["not", "yours"]}\n')
    before = snapshot(mine)
    assert train(config, mine) == 2
    err = capsys.readouterr().err
    assert "holds files leafseg did not write (config.yaml, split.json)" in err
    assert snapshot(mine) == before


def test_a_link_and_a_resume_into_a_non_run_are_refused(config, tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert train(config, tmp_path / "link") == 2
    assert "is a link" in capsys.readouterr().err
    assert train(config, tmp_path / "empty", "--resume") == 2
    assert "no leafseg run to resume here" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists() and not any(real.iterdir())


def test_a_run_folder_is_marked_and_resumes(config, tmp_path):
    run = tmp_path / "run"
    assert train(config, run, "train.max_steps=2") == 0
    assert (run / ".leafseg-run").is_file()
    assert train(config, run, "train.max_steps=3", "--resume") == 0
