"""Configuration as data: OmegaConf YAML = packaged defaults <- base config(s) <- user file <- ``key=value``
overrides. A config file builds on another with ``base: NAME`` (a packaged config such as ``cpu``, or a path)."""

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
        The merged OmegaConf ``DictConfig`` (struct mode: reading or setting an unknown key fails).

    Raises:
        ValueError: an unknown key, a malformed file or override, or a circle of ``base:`` files.
    """
    cfg = _read("default")
    OmegaConf.set_struct(cfg, True)
    try:
        if source is not None:
            cfg = OmegaConf.merge(cfg, _read_layered(source))
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
