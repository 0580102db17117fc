"""``leafseg serve``: a local web page to try a saved model on one's own image without writing code.

Drop a PNG/JPG, a NIfTI file or the files of a DICOM series; choose steps, ensemble size, seed and threshold; see
the overlay, the probability and (ensembles) the uncertainty with colour bars, slice by slice for volumes; download
the mask (PNG, or NIfTI in the input's space). The masks are ``leafseg predict``'s: the page calls the same
:func:`leafseg.prediction.segment_file`. gradio (the ``app`` extra) is imported only here, when the command runs; its
page, scripts and fonts come from the installed package, so the app works offline.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from . import data as D
from .prediction import Segmentation, overlay_file_array, segment_file

logger = logging.getLogger(__name__)

STEPS_MAX, ENSEMBLE_MAX = 50, 16


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports to a server
    try:
        import gradio as gr
    except ImportError:
        raise SystemExit("leafseg serve needs the app extra: pip install 'leafseg[app]'") from None
    return gr


def input_path(files: list[str], workdir: Path) -> Path:
    """The uploaded file, or, for several files, a folder holding them as one DICOM series. ValueError when
    several files are not one series."""
    if not files:
        raise ValueError("no file: drop an image (PNG/JPG), a NIfTI file or the files of one DICOM series")
    if len(files) == 1:
        return Path(files[0])
    series = workdir / "series"
    series.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, series / Path(f).name)
    if not D.is_volume(series):
        names = ", ".join(sorted(Path(f).name for f in files)[:5])
        raise ValueError(f"{len(files)} files ({names}{', ...' if len(files) > 5 else ''}): several files must be "
                         "the slices of one DICOM series; drop one image or volume at a time")
    return series


def colour_bar_figure(values: np.ndarray, vmax: float, label: str) -> np.ndarray:
    """(H, W) values in [0, vmax] drawn with the 'magma' map and a labelled colour bar, as an (h, w, 3) uint8
    picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = values.shape
    fig, ax = plt.subplots(figsize=(6, 6 * height / max(width, 1) + 0.2), dpi=100)
    shown = ax.imshow(values, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, label=label)
    fig.tight_layout()
    fig.canvas.draw()
    picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return picture


def views(seg: Segmentation, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Overlay, probability picture and (ensembles) uncertainty picture of plane ``index``."""
    index = int(np.clip(index, 0, len(seg.masks) - 1))
    picture = overlay_file_array(seg.images[index], seg.masks[index], seg.labels)  # label maps: with a legend
    prob = seg.probabilities[index]
    if prob.ndim == 3:  # several structures: the probability of the chosen class (how sure each pixel is)
        probability = colour_bar_figure(prob.max(0), 1.0, "probability of the shown structure")
    else:
        probability = colour_bar_figure(prob, 1.0, "foreground probability")
    uncertainty = None
    if seg.uncertainty is not None:  # std of values in [0, 1] is at most 0.5
        uncertainty = colour_bar_figure(seg.uncertainty[index], 0.5, "std over the ensemble")
    return picture, probability, uncertainty


def summary(seg: Segmentation, name: str, seconds: float, pipe) -> str:
    area = [float(np.count_nonzero(m)) / m.size for m in seg.masks]
    what = "image" if seg.volume is None else f"volume, {len(seg.masks)} slices along axis {seg.axis}"
    found = (f"{area[0]:.1%} of the image" if seg.volume is None
             else f"on {sum(a > 0 for a in area)} of {len(area)} slices")
    cleared = sum(seg.cleared or [])
    if cleared:  # say why a mask is empty: the model's calibrated decision, not a missed object
        found += (" (the model's frame-level decision found nothing here and cleared the mask)" if seg.volume is None
                  else f" ({cleared} slice(s) cleared by the model's frame-level decision)")
    return (f"**{name}** ({what}): mask {found}; {seconds:.2f} s on {pipe.device} "
            f"({getattr(pipe, 'precision', 'fp32')}).")


def build_app(model: str | Path, device: str | None = None, precision: str = "fp32"):
    """The gradio Blocks page for the saved model folder ``model`` (loaded once, offline)."""
    # users' uploads (gradio's cache too, unless GRADIO_TEMP_DIR says otherwise), series assembled from them and
    # masks to download live in one folder, removed when the server stops (Ctrl-C or SIGTERM)
    workroot = Path(tempfile.mkdtemp(prefix="leafseg-serve-"))
    atexit.register(shutil.rmtree, workroot, ignore_errors=True)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(workroot / "uploads"))  # read when gradio is first imported
    gr = _import_gradio()
    from .pipelines import load_pipeline

    pipe = load_pipeline(model, device, precision=precision)
    kind = type(pipe).__name__
    logger.info(f"leafseg serve: uploads and results kept in {workroot} while serving (removed when it stops)")

    def run(files, steps, ensemble, seed, threshold):
        upload_dirs = {str(Path(f).parent) for f in files or []}
        workdir = Path(tempfile.mkdtemp(dir=workroot))
        try:
            path = input_path(files or [], workdir)
            options = {"num_inference_steps": int(steps), "ensemble_size": int(ensemble), "seed": int(seed),
                       "threshold": float(threshold)}
            start = time.perf_counter()
            seg = segment_file(pipe, path, options)
            seconds = time.perf_counter() - start
        except (ValueError, OSError) as err:
            message = str(err)
            for folder in upload_dirs | {str(workdir / "series")}:  # name the file as the user knows it
                message = message.replace(folder + os.sep, "")
            logger.warning(f"leafseg serve: refused an upload: {message}")  # one line in the server's log
            raise gr.Error(message, duration=None, print_exception=False) from None
        name = Path(files[0]).name if len(files) == 1 else f"DICOM series ({len(files)} files)"
        mask_file = seg.write_mask(workdir / f"{D.file_stem(path)}_mask")
        shown = int(np.argmax([m.sum() for m in seg.masks])) if seg.volume is not None else 0  # largest mask
        picture, probability, uncertainty = views(seg, shown)
        slider = gr.update(visible=seg.volume is not None, minimum=0, maximum=max(len(seg.masks) - 1, 1),
                           value=shown)
        return (seg, picture, probability, gr.update(value=uncertainty, visible=uncertainty is not None), slider,
                str(mask_file), summary(seg, name, seconds, pipe))

    def show_slice(seg, index):
        if seg is None:
            return gr.update(), gr.update(), gr.update()
        picture, probability, uncertainty = views(seg, index)
        return picture, probability, gr.update(value=uncertainty, visible=uncertainty is not None)

    with gr.Blocks(title="leafseg", analytics_enabled=False) as page:
        gr.Markdown(f"## leafseg: segment your own image\nModel `{Path(model).name}` ({kind}). Drop a PNG/JPG, a "
                    "NIfTI file or all files of one DICOM series, then press **Segment**.")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="image, NIfTI volume or DICOM series", file_count="multiple",
                                type="filepath", elem_id="input-files")
                fixed = " (1 for this model)"
                steps = gr.Slider(1, STEPS_MAX, value=1, step=1, elem_id="steps",
                                  interactive=pipe.supports_multistep,
                                  label="denoising steps (1 = LEAF's single step)"
                                  + ("" if pipe.supports_multistep else fixed))
                ensemble = gr.Slider(1, ENSEMBLE_MAX, value=1, step=1, elem_id="ensemble",
                                     interactive=pipe.supports_ensembles,
                                     label="ensemble size (>= 2: uncertainty)"
                                     + ("" if pipe.supports_ensembles else fixed))
                seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
                threshold = gr.Slider(0.01, 0.99, value=0.5, step=0.01, label="threshold", elem_id="threshold")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                info = gr.Markdown(elem_id="summary")
                download = gr.File(label="mask (PNG, or NIfTI in the input's space)", elem_id="mask-file")
            with gr.Column(scale=2):
                slice_index = gr.Slider(0, 1, value=0, step=1, label="slice", visible=False, elem_id="slice")
                with gr.Row():
                    picture = gr.Image(label="overlay", type="numpy", format="png", height=380, elem_id="overlay")
                    probability = gr.Image(label="probability", type="numpy", format="png", height=380,
                                           elem_id="probability")
                uncertainty = gr.Image(label="uncertainty", type="numpy", format="png", height=380, visible=False,
                                       elem_id="uncertainty")
        button.click(run, [files, steps, ensemble, seed, threshold],
                     [state, picture, probability, uncertainty, slice_index, download, info])
        slice_index.change(show_slice, [state, slice_index], [picture, probability, uncertainty])
    return page


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 7860, device: str | None = None,
          precision: str = "fp32") -> None:
    """Serve the page for ``model`` on ``host:port`` until interrupted."""
    page = build_app(model, device, precision)
    logger.info(f"leafseg serve: {model} on http://{host}:{port} (Ctrl+C stops)")
    page.launch(server_name=host, server_port=port, share=False, ssr_mode=False, show_error=True, quiet=True)
