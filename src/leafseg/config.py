"""Configuration as data: OmegaConf YAML = packaged defaults <- user file <- ``key=value`` overrides."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


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
    try:
        return OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends
        raise ValueError(f"{path}: not a valid YAML config ({err})") from None


def load_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Defaults, then ``source`` (file or packaged name), then dotlist ``overrides``; unknown keys are errors."""
    cfg = _read("default")
    OmegaConf.set_struct(cfg, True)
    try:
        if source is not None:
            cfg = OmegaConf.merge(cfg, _read(source))
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        where = f" in {source}" if source is not None else ""
        raise ValueError(f"invalid configuration{where}: {err}") from None
    return cfg


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested dict -> {"section.key": value}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
