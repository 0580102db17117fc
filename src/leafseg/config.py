"""Configuration as data: OmegaConf YAML = packaged defaults <- base config(s) <- user file <- ``key=value``
overrides, typed by the structured config of :mod:`leafseg.config_schema`. A config file builds on another with
``base: NAME`` (a packaged config such as ``cpu``, or a path)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config_schema import (RETIRED_KEYS, LeafSegConfig, SourceConfig, check_ranges, check_values, retired_key_error,
                            schema_of)


def packaged_configs() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("leafseg.configs").iterdir() if p.name.endswith(".yaml"))


def _read(source: str | Path) -> DictConfig:
    """A YAML file path, or the name of a packaged config (e.g. ``cpu-small``)."""
    path = Path(source)
    if not path.is_file():
        name = str(source).removesuffix(".yaml")
        if name in packaged_configs():
            return OmegaConf.create(resources.files("leafseg.configs").joinpath(f"{name}.yaml").read_text())
        raise FileNotFoundError(f"{source}: config file not found (packaged configs: {', '.join(packaged_configs())})")
    return read_yaml(path)


def read_yaml(path: str | Path, what: str = "YAML config") -> DictConfig:
    """A YAML file through OmegaConf's safe loader (a ``!!python`` tag is never run); a malformed file is one error
    naming it."""
    try:
        return OmegaConf.load(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except Exception as err:  # yaml.YAMLError (e.g. a !!python tag the safe loader refuses) and friends
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a valid {what} ({first})") from None


def _read_layered(source: str | Path, seen: tuple[str, ...] = ()) -> DictConfig:
    """``source`` on top of its ``base:`` (a packaged name, or a file path relative to ``source``'s folder), and so
    on down; the packaged defaults lie below them all."""
    cfg = _read(source)
    base = cfg.pop("base", None) if isinstance(cfg, DictConfig) else None
    if base is None or str(base).removesuffix(".yaml") == "default":
        return cfg
    if Path(source).is_file() and not Path(str(base)).is_absolute() and (Path(source).parent / str(base)).is_file():
        base = Path(source).parent / str(base)
    if str(base) in seen or str(base) == str(source):
        raise ValueError(f"{source}: config bases form a circle ({' -> '.join([*seen, str(source), str(base)])})")
    return OmegaConf.merge(_read_layered(base, (*seen, str(source))), cfg)


def load_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Defaults, then ``source`` (file or packaged name, on top of the config its ``base:`` names, if any), then
    dotlist ``overrides``; unknown keys are errors.

    Args:
        source: a YAML file, a packaged recipe name (``cpu``, ``cpu-polyp``, ``cpu-small``, ``paper``), or None for
            the defaults (``configs/default.yaml``, which lists every key).
        overrides: ``key=value`` strings, e.g. ``["data.root=my-data", "train.time_budget_min=15"]``.

    Returns:
        The merged OmegaConf ``DictConfig``, typed by :class:`leafseg.config_schema.LeafSegConfig`: reading or
        setting an unknown key fails, and so does a value of the wrong type or outside a field's choices.

    Raises:
        ValueError: an unknown key, a value of the wrong type or out of range (the message names the key, the value
            and what is allowed), a malformed file or override, or a circle of ``base:`` files.
    """
    where = f" in {source}" if source is not None else ""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(LeafSegConfig), _read("default"))
        if source is not None:
            cfg = OmegaConf.merge(cfg, _yaml_no(drop_retired(_read_layered(source), where)))
        cfg = OmegaConf.merge(cfg, _yaml_no(drop_retired(OmegaConf.from_dotlist(list(overrides)), " in an override")))
    except OmegaConfBaseException as err:
        raise ValueError(f"invalid configuration{where}: {_describe(err)}") from None
    check_values(cfg)
    return cfg


@functools.lru_cache(maxsize=1)
def _defaults() -> DictConfig:
    return load_config()


def section_config(key: str, given: Mapping | None = None) -> DictConfig:
    """One section of the configuration (dotted ``key``, e.g. ``data.augment``) as an object built from that section
    alone takes it: default.yaml's values, ``given`` laid over them, then the schema's types, choices and ranges,
    with errors naming ``key.field``. So such an object has no defaults and no checks of its own."""
    section = copy.deepcopy(OmegaConf.select(_defaults(), key))
    if given:
        plain = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(given).items()}
        try:
            section = OmegaConf.merge(section, plain)
        except OmegaConfBaseException as err:
            raise ValueError(f"invalid configuration: {_describe(err)}") from None
    check_ranges(section, schema_of(key), key + ".")
    return section


def drop_retired(layer: DictConfig, where: str = "") -> DictConfig:
    """``layer`` without the retired keys that hold their off value (:data:`leafseg.config_schema.RETIRED_KEYS`);
    one of them set to anything else is an error naming it."""
    for key in RETIRED_KEYS:
        parent, _, leaf = key.rpartition(".")
        section = OmegaConf.select(layer, parent, default=None)
        if isinstance(section, DictConfig) and leaf in section:
            if (err := retired_key_error(key, section[leaf], where)) is not None:
                raise err
            section.pop(leaf)
    return layer


def _yaml_no(layer: DictConfig) -> DictConfig:
    """YAML reads an unquoted ``no`` as false: ``train.mixed_precision: no`` means the choice "no"."""
    if OmegaConf.select(layer, "train.mixed_precision", default=None) is False:
        layer.train.mixed_precision = "no"
    return layer


def _describe(err: OmegaConfBaseException) -> str:
    """OmegaConf's error as one line that starts with the key: ``train.lr: Value 'abc' ... could not be converted
    to Float``, ``train.lr_schedule: Invalid value 'x', expected one of [...]``, ``train.foo: no such key (...)``."""
    message = str(getattr(err, "msg", None) or err).strip().splitlines()[0]
    key, section = getattr(err, "full_key", None), getattr(err, "object_type", None)
    if section is SourceConfig and key and not key.startswith("data."):  # OmegaConf drops the path of list items
        key = f"data.sources[...].{key}"
    if key and message.startswith("Key ") and is_dataclass(section):
        return f"{key}: no such key (the keys here: {', '.join(f.name for f in fields(section))})"
    return f"{key}: {message}" if key else message


def to_container(cfg: DictConfig) -> dict:
    """Plain, resolved values (choices as their strings)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested dict -> {"section.key": value}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
