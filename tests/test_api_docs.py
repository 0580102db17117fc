"""The API reference: every public name documents its arguments and what it returns, and the committed page
(docs/api/, built by docs/build_api.py with pdoc) is what the code's docstrings give today, so it cannot fall behind."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import leafseg

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _documented(name: str):
    """What a reader calls: a pipeline's __call__, a function itself."""
    obj = getattr(leafseg, name)
    return obj.__call__ if isinstance(obj, type) and hasattr(obj, "from_pretrained") else obj


@pytest.mark.parametrize("name", [n for n in leafseg.__all__ if n not in ("__version__", "SegmentationPipelineOutput")])
def test_the_public_api_says_its_arguments_and_returns(name):
    obj = _documented(name)
    doc = obj.__doc__ or ""
    if isinstance(obj, type):  # a class to build or subclass: its arguments, or its fields
        assert "Args:" in doc or "Attributes:" in doc, f"leafseg.{name}: no Args/Attributes docstring"
    else:
        assert "Args:" in doc and "Returns:" in doc, f"leafseg.{name}: no Args/Returns docstring"


def test_the_committed_api_page_is_current(tmp_path):
    if importlib.util.find_spec("pdoc") is None:
        pytest.skip("pdoc is not installed (it comes with the test extra: pip install -e '.[test]')")
    sys.path.insert(0, str(DOCS))
    from build_api import build

    built = {p.relative_to(tmp_path): p.read_text(encoding="utf-8") for p in build(tmp_path)}
    committed = {p.relative_to(DOCS / "api"): p.read_text(encoding="utf-8") for p in (DOCS / "api").rglob("*.html")}
    assert built.keys() == committed.keys()
    stale = [str(name) for name in built if built[name] != committed[name]]
    assert not stale, f"docs/api is stale ({stale}): run .venv/bin/python docs/build_api.py"
