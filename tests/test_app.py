"""``leafseg serve`` in a real browser: Debian's chromium, headless, driven by playwright. The mask downloaded from
the page must equal ``leafseg predict``'s for the same file and options (a 2D image and a NIfTI volume), a broken
file must show the CLI's message in the page, the page must say what the model finds, that it is for research use,
and what its colours mean, and it must load nothing from outside the machine.

Skipped with a reason where the app extra, playwright or chromium is absent (``.ci/run`` installs them; under
CI=true a missing piece fails instead)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from browser import CHROMIUM, browser_page, download_mask, segment, served
from leafseg import data as D
from leafseg.cli import main
from tiny import tiny_pipeline

pytestmark = pytest.mark.slow


def _missing() -> str | None:
    if importlib.util.find_spec("gradio") is None:
        return "the app extra is not installed (pip install 'leafseg[app]')"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright)"
    if not Path(CHROMIUM).is_file():
        return "Debian's chromium is absent (apt-get install chromium)"
    return None


if _missing():
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{_missing()} (CI=true: .ci/run installs it)", pytrace=False)
    pytest.skip(_missing(), allow_module_level=True)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A tiny saved model, a 2D image and a 3-slice NIfTI volume, the threshold that splits the image's probability
    map near its median (so that the mask is neither empty nor full), and the served page's URL."""
    root = tmp_path_factory.mktemp("app")
    pipe = tiny_pipeline(resolution=32)
    pipe.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    image = (rng.random((40, 48, 3)) * 255).astype(np.uint8)
    image[10:30, 12:36] //= 3
    Image.fromarray(image).save(root / "frame.png")
    volume = (rng.random((40, 48, 3)) * 1000).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 2.5, 1.0])), str(root / "scan.nii.gz"))
    (root / "broken.png").write_bytes(b"this is not a PNG")
    with torch.no_grad():
        probability = pipe([image], seed=3).probabilities[0]
    threshold = round(float(np.median(probability)), 2)
    share = float((probability > threshold).mean())
    assert 0.05 < share < 0.95, f"the tiny model's probabilities do not split at {threshold}: {share:.2f}"
    with served(root / "model", root / "serve.log") as url:
        yield {"root": root, "url": url, "threshold": threshold}


def _predict(app, name: str, out: str) -> Path:
    root = app["root"]
    assert main(["predict", "--model", str(root / "model"), "--input", str(root / name), "--output", str(root / out),
                 "--seed", "3", "--threshold", str(app["threshold"])]) == 0
    return root / out


def test_the_page_mask_is_predicts_mask_and_nothing_comes_from_outside(app):
    root = app["root"]
    with browser_page() as (page, requested):
        segment(page, app["url"], [root / "frame.png"], seed=3, threshold=app["threshold"])
        got = download_mask(page, root / "from-page.png")
        page.locator("#overlay img").first.wait_for()
        assert page.locator("#summary").inner_text().startswith("frame.png (image): mask")
        described = page.locator("#model-description").inner_text()  # what it finds, its data, its scores
        assert "What it segments: one structure" in described and "Measured" in described
        assert "Research use only: not for diagnosis" in described
        assert "the predicted mask, tinted and outlined in orange-red" in page.locator("#overlay-legend").inner_text()
        legend = page.locator("#legend").inner_text()
        assert "how sure the model is" in legend and "how much the ensemble's masks disagree" in legend
    expected = np.asarray(Image.open(_predict(app, "frame.png", "predicted") / "frame_mask.png"))
    mask = np.asarray(Image.open(got))
    assert mask.shape == (40, 48) and 0 < (mask > 0).mean() < 1
    np.testing.assert_array_equal(mask, expected)
    outside = [u for u in requested if not u.startswith(app["url"]) and not u.startswith(("data:", "blob:"))]
    assert not outside, f"the page loaded from outside the machine: {outside[:5]}"


def test_a_volume_comes_back_as_nifti_in_its_space_slice_by_slice(app):
    root = app["root"]
    with browser_page() as (page, _):
        segment(page, app["url"], [root / "scan.nii.gz"], seed=3, threshold=app["threshold"])
        got = download_mask(page, root / "from-page.nii.gz")
        slider = page.locator("#slice input[type=number]").first
        slider.wait_for()  # the slice slider appears for volumes
        assert "3 slices" in page.locator("#summary").inner_text()
    expected = nib.load(str(_predict(app, "scan.nii.gz", "predicted-volume") / "scan_mask.nii.gz"))
    mask = nib.load(str(got))
    np.testing.assert_array_equal(np.asarray(mask.dataobj), np.asarray(expected.dataobj))
    np.testing.assert_allclose(mask.affine, np.diag([0.8, 0.8, 2.5, 1.0]))


def test_a_broken_file_shows_the_clis_message(app):
    root = app["root"]
    with pytest.raises(ValueError) as err:
        D.load_image(root / "broken.png")
    message = str(err.value).replace(str(root) + os.sep, "")
    assert message.startswith("broken.png: ")
    with browser_page() as (page, _):
        segment(page, app["url"], [root / "broken.png"])
        page.get_by_text(message).first.wait_for(timeout=60_000)
    log = (root / "serve.log").read_text()  # the server's terminal: one line, no traceback (it printed 28 lines)
    assert f"refused an upload: {message}" in log and "Traceback" not in log


def test_the_upload_folder_goes_when_the_server_is_stopped(tmp_path, app):
    """Stopped with SIGTERM, the server left its upload folder (users' images) in the temp dir."""
    import re

    log = tmp_path / "serve.log"
    with browser_page() as (page, _), served(app["root"] / "model", log) as url:
        segment(page, url, [app["root"] / "frame.png"])
        page.locator("#mask-file a[download]").first.wait_for(timeout=120_000)
        folder = Path(re.search(r"kept in (\S+) while serving", log.read_text()).group(1))
        assert folder.is_dir() and any((folder / "uploads").rglob("frame.png"))
    assert not folder.exists()
