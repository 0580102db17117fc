"""The typed configuration: every wrong key, type or choice is one error from ``load_config`` naming the key, the
value and what is allowed, before any work; which keys a resumed run may change is a property of the field."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from leafseg.cli import main
from leafseg.config import load_config, packaged_configs
from leafseg.config_schema import LeafSegConfig, Layout, resumable_keys


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "train.lr: Value 'abc' of type 'str' could not be converted to Float"),
    ("train.lr_schedule=bogus", "train.lr_schedule: Invalid value 'bogus', expected one of "
                                "[constant_with_warmup, cosine, linear]"),
    ("run.device=gpu", "run.device: Invalid value 'gpu', expected one of [auto, cpu, cuda]"),
    ("data.layout=kvasir", "data.layout: Invalid value 'kvasir', expected one of [folder, cvc-clinicdb, kvasir-seg,"),
    ("train.nonexistent=1", "train.nonexistent: no such key (the keys here: batch_size, max_steps,"),
    ("data.sources=[{root: x, layout: kvasir}]", "data.sources[...].layout: Invalid value 'kvasir'"),
    ("data.sources=[{root: x, foo: 1}]", "data.sources[...].foo: no such key (the keys here: root, name, layout,"),
    ("align.enabled=maybe", "align.enabled: Value 'maybe' is not a valid bool"),
    ("train.time_budget_min=-5", "train.time_budget_min must be a positive number of minutes or null, got -5.0"),
])
def test_a_wrong_value_is_one_error_naming_key_value_and_choices(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config("cpu", [override])


def test_a_wrong_value_stops_train_before_the_run_folder_exists(tmp_path, capsys):
    """train.lr_schedule was once checked only after the caches were built: now nothing is read or written."""
    out = tmp_path / "run"
    code = main(["train", "--config", "cpu-small", "--output", str(out), f"data.root={tmp_path}",
                 "train.lr_schedule=cosin"])
    assert code == 2 and not out.exists()
    assert "train.lr_schedule: Invalid value 'cosin', expected one of" in capsys.readouterr().err


def test_default_yaml_sets_every_field_and_recipes_load():
    """The values live in default.yaml only: every schema field gets one there (data.root is the user's)."""
    assert OmegaConf.missing_keys(load_config()) == {"data.root"}
    for name in packaged_configs():
        if name != "paper":  # needs $LEAFSEG_PRETRAINED, resolved only when read
            cfg = load_config(name)
            assert isinstance(cfg.train.lr, float) and isinstance(cfg.train.max_steps, int)


def test_choices_read_as_strings_and_yaml_no_is_the_choice_no():
    cfg = load_config("cpu", ["train.mixed_precision=no", "data.layout=kvasir-seg"])
    assert cfg.train.mixed_precision == "no" and f"{cfg.train.mixed_precision}" == "no"
    assert cfg.data.layout == "kvasir-seg" and {"kvasir-seg": 1}[cfg.data.layout] == 1
    assert OmegaConf.to_yaml(cfg).count("mixed_precision: 'no'") == 1
    from leafseg.config import to_container

    assert type(to_container(cfg)["train"]["lr_schedule"]) is str


def test_choices_are_the_registries():
    """Each choice the schema offers is one the code implements (and every implementation is offered)."""
    from diffusers.schedulers import DDIMScheduler

    from leafseg.data.layouts import LAYOUTS
    from leafseg.training import METHODS
    from leafseg.training.caches import CACHE_BACKENDS

    schema = OmegaConf.structured(LeafSegConfig)
    assert {m.value for m in Layout} == set(LAYOUTS)
    assert set(type_choices(schema, "method")) == set(METHODS)
    assert set(type_choices(schema, "run.cache_backend")) == set(CACHE_BACKENDS)
    for name in type_choices(schema, "diffusion.beta_schedule"):
        DDIMScheduler(beta_schedule=name)  # diffusers knows it


def type_choices(schema, key: str) -> list[str]:
    node = schema._get_node(key) if "." not in key else OmegaConf.select(schema, key.rsplit(".", 1)[0])._get_node(
        key.rsplit(".", 1)[1])
    return [m.value for m in node._metadata.ref_type]


def test_resumable_is_a_property_of_the_field():
    """Where things are and how the run is executed and reported may change on --resume; nothing that decides
    what is learned may (the keys as they were listed by hand before the schema held them)."""
    assert resumable_keys() == {
        "run.output_dir", "run.cache_dir", "run.cache_backend", "run.device", "data.root", "data.split_file",
        "data.num_workers", "autoencoder.path", "unet.pretrained", "align.teacher_checkpoint", "train.max_steps",
        "train.val_every", "train.checkpoint_every", "train.log_every", "train.val_at_start", "train.log_samples",
        "train.num_threads", "train.mixed_precision", "train.compile"}


def test_retired_options_read_their_off_value_and_refuse_any_other(tmp_path):
    """An option removed after it lost its experiment: a config (or a run folder) that says it was off still loads;
    one that used it is refused, naming the key and why it went."""
    from leafseg.config import load_config

    old = tmp_path / "old.yaml"
    old.write_text("data:\n  augment:\n    overlay: 0.0\nalign:\n  augmented_views: teacher\n")
    cfg = load_config(old)
    assert "overlay" not in cfg.data.augment and "augmented_views" not in cfg.align
    with pytest.raises(ValueError, match=r"data\.augment\.overlay in an override: this option was removed"):
        load_config(None, ["data.augment.overlay=0.5"])
    used = tmp_path / "used.yaml"
    used.write_text("align:\n  augmented_views: skip\n")
    with pytest.raises(ValueError, match=rf"align\.augmented_views in {used}: this option was removed"):
        load_config(used)


@pytest.mark.parametrize("override, message", [
    ("data.augment.p=2", "data.augment.p must be a finite number in [0, 1], got 2.0"),
    ("data.augment.crop_scale=[0.8,0.5]", "data.augment.crop_scale must be [lo, hi] with lo <= hi, both in (0, 1]"),
    ("data.augment.gamma=[0,1.5]", "data.augment.gamma must be [lo, hi] with lo <= hi, both > 0"),
    ("data.colour_jitter.hue=0.6", "data.colour_jitter.hue must be a finite number in [0, 0.5], got 0.6"),
    ("unet.dropout=1.5", "unet.dropout must be a finite number in [0, 1], got 1.5"),
    ("image_encoder.semantic_size=8", "image_encoder.semantic_size must be a whole number >= 16, got 8"),
])
def test_ranges_are_checked_at_load_naming_the_key(override, message):
    """Every range lives on its field in the schema and is checked by load_config, before any data is read."""
    with pytest.raises(ValueError, match=re.escape(message)):
        load_config(None, [override])


def test_an_object_built_from_one_section_takes_the_schemas_defaults_and_checks():
    """The augmentations built without a whole config: default.yaml's values for what is not given, the schema's
    types, choices and ranges for what is (no defaults or checks of their own)."""
    from leafseg.config import section_config
    from leafseg.data.augment import ColourJitter, SampleAugmentation

    defaults = load_config(None).data.augment
    assert SampleAugmentation().settings == {k: (tuple(v) if k in ("crop_scale", "gamma") else
                                                 (str(v) if k == "negative_mode" else v))
                                             for k, v in defaults.items()}
    assert section_config("data.augment", {"rotate": 10}).rotate == 10.0
    with pytest.raises(ValueError, match=r"data\.augment\.crop_scale must be"):
        SampleAugmentation(crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"negative_mode.*crop.*inpaint"):
        SampleAugmentation(negative=0.1, negative_mode="paint")
    with pytest.raises(ValueError, match=r"data\.augment\.zoom: no such key"):
        SampleAugmentation(zoom=0.5)
    with pytest.raises(ValueError, match=r"data\.colour_jitter\.hue must be"):
        ColourJitter(hue=0.6)
