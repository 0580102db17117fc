"""Model files: saved configs, published weight files read without running code and loaded strictly, and their
hashes, with errors that name the file. (Nothing here imports from above ``leafseg.models``.)"""

from __future__ import annotations

import functools
import hashlib
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin
from torch import nn


def listing(items: Sequence[Any], limit: int = 8, show: Callable[[Any], str] = str) -> str:
    """The first ``limit`` items, comma-separated, with how many there are in all when there are more."""
    shown = ", ".join(show(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


class _ModelConfig(ConfigMixin):
    config_name = "config.json"


class _PipelineIndex(ConfigMixin):
    config_name = "model_index.json"


def read_config(folder: str | Path, name: str = "config.json") -> dict[str, Any]:  # or "model_index.json"
    """A saved diffusers config (``config.json``, or ``model_index.json`` of a pipeline) through diffusers' own
    reader; a missing or malformed file is an error naming it."""
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (expected a folder written by save_pretrained)")
    reader = {cls.config_name: cls for cls in (_ModelConfig, _PipelineIndex)}[name]
    try:
        return dict(reader.load_config(path.parent))
    except OSError as err:  # diffusers: "It looks like the config file at ... is not a valid JSON file."
        raise ValueError(f"{path}: {err}") from None


class UnsafeWeightsError(ValueError):
    """A pickle that torch's weights-only loading rejects: loading it would execute code."""


def refused_pickle(path: str | Path, err: BaseException | None = None) -> UnsafeWeightsError:
    """The one-line error for such a file, naming the global it references where torch said so."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err or ""))
    what = f" (it references {found.group(1)})" if found else ""
    return UnsafeWeightsError(f"{path}: refused, loading it would execute code{what}; leafseg reads weights as "
                              "plain tensors only (if you trust the file, re-save its tensors as .safetensors)")


def load_weights_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, its failures as one line naming the file: a pickle that
    would run code (:func:`refused_pickle`), or a file torch cannot read."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise refused_pickle(path, err) from None
    except Exception as err:  # not a torch file, truncated
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable PyTorch weights file ({first})") from None


def refused_in(err: BaseException, files: Sequence[str | Path]) -> UnsafeWeightsError | None:
    """Where a library's loader (diffusers, transformers) failed because torch's weights-only loading refused a
    pickle somewhere in ``err``'s chain: the one-line error naming the refused file among ``files`` (None
    otherwise)."""
    chain, cause = [], err
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if not any(isinstance(e, pickle.UnpicklingError) for e in chain):
        return None
    for f in files:
        try:
            load_weights_file(f)
        except UnsafeWeightsError as refused:
            return refused
        except ValueError:
            continue
    return refused_pickle(files[0] if files else "weights", err)


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt file, read with ``weights_only=True`` (no code runs), unwrapped from a
    ``"model"``/``"state_dict"`` entry if there is one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path}")
    state = load_weights_file(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return dict(state)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, what: str) -> None:
    """``module.load_state_dict`` with torch's own key report (plus the shape mismatches, on which torch would stop
    before reporting), turned into one error naming the file and every missing, unexpected or mis-shaped key."""
    expected = module.state_dict()
    wrong = [k for k, v in state.items() if k in expected and tuple(getattr(v, "shape", ())) != expected[k].shape]
    report = module.load_state_dict({k: v for k, v in state.items() if k not in wrong}, strict=False)
    problems = []
    if report.missing_keys:
        missing = [k for k in report.missing_keys if k not in wrong]
        if missing:
            problems.append("missing keys: " + listing(missing, show=lambda k: f"{k} {tuple(expected[k].shape)}"))
    if report.unexpected_keys:
        problems.append("unexpected keys: " + listing(report.unexpected_keys,
                                                      show=lambda k: f"{k} {tuple(getattr(state[k], 'shape', ()))}"))
    if wrong:  # torch would raise on these before reporting the rest
        problems.append("wrong shapes: " + listing(
            wrong, show=lambda k: f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"))
    if problems:
        raise ValueError(f"{path} is not a {what} checkpoint: " + "; ".join(problems))


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:  # size and mtime only key the cache
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cached_sha256(path: str | Path) -> str:
    """SHA-256 of a weight file, computed once per process and file version (teachers hash theirs on every build)."""
    path = Path(path)
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


def assert_finite(module: nn.Module, what: str) -> None:
    """FloatingPointError naming ``what`` and the first parameter or buffer holding nan/inf."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FloatingPointError(f"{what}: {name} holds non-finite values (nan/inf)")
