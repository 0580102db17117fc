"""``leafseg serve``: a local web page to try a saved model on one's own image without writing code.

Drop a PNG/JPG, a NIfTI file or the files of a DICOM series; choose steps, ensemble size, seed and threshold; see
the overlay, the probability and (ensembles) the uncertainty with colour bars, slice by slice for volumes; download
the mask (PNG, or NIfTI in the input's space). The page says what the model segments, on what data it was trained
and how it scored (its model card and the evaluations found beside it), that it is for research use and not for
diagnosis, and what the overlay's colours and the two maps mean. The masks are ``leafseg predict``'s: the page calls
the same :func:`leafseg.prediction.segment_file`. gradio (the ``app`` extra) is imported only here, when the command
runs; its page, scripts and fonts come from the installed package, so the app works offline.
"""

from __future__ import annotations

import atexit
import json
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

NOTICE = "**Research use only: not for diagnosis.** A model's masks are suggestions to be checked by a person."
#: the overlay's colour for a one-structure model (:func:`leafseg.figures.overlay`'s default)
MASK_COLOUR = "#ff4000"
PROBABILITY_LEGEND = ("**Probability**: how sure the model is, pixel by pixel, that the structure is there "
                      "(dark 0, bright 1); the mask is where it passes the threshold.")
UNCERTAINTY_LEGEND = ("**Uncertainty** (ensemble of 2 or more): how much the ensemble's masks disagree at each "
                      "pixel: dark where they agree, bright where they do not (the spread of their probabilities, "
                      "0 to 0.5). Bright areas deserve a closer look.")


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
        uncertainty = colour_bar_figure(seg.uncertainty[index], 0.5, "disagreement of the ensemble (std)")
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


def _card_metadata(model: Path) -> dict:
    """The YAML header of the model's card (``README.md``, written at export), or {} without one."""
    card = model / "README.md"
    if not card.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(card).data.to_dict()
    except Exception as err:  # a hand-edited card must not stop the page; say why the description is short
        logger.warning(f"leafseg serve: {card}: model card not read ({err})")
        return {}


def _evaluations(model: Path) -> list[str]:
    """One line per ``leafseg evaluate`` of these weights found beside them (``eval-*/summary.json`` in the run
    folder, matched by the weights' hash): data, split, images and mean Dice with its 95% CI, or for frames without
    the structure how many were left empty."""
    from .evaluation.evaluate import model_digest

    found = sorted([*model.parent.glob("eval-*/summary.json"), *model.glob("eval-*/summary.json")])
    digest, lines = model_digest(model) if found else None, []
    for summary_file in found:
        try:
            summary = json.loads(summary_file.read_text())
            if summary["checkpoint_sha256"] != digest:  # another model's (or an older export's) evaluation
                continue
            metrics = summary["metrics"]
            dice = metrics["dice"] if "dice" in metrics else metrics["mean_foreground"]["dice"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not an evaluation of this model, or not one this version reads
        where = f"{Path(summary['data']).name} {summary['split']}"
        empty = metrics.get("empty") or {}
        if empty.get("gt_empty") and empty["gt_empty"] == summary["n_images"]:  # frames without the structure
            lines.append(f"{where}: {empty['both_empty']} of {empty['gt_empty']} frames without it left empty")
            continue
        what = "Dice" if "dice" in metrics else "mean Dice over the structures"
        lines.append(f"{where} ({summary['n_images']} images): {what} "
                     f"{dice['mean']:.3f} [{dice['ci_low']:.3f}, {dice['ci_high']:.3f}]")
    return lines


def model_description(model: str | Path, pipe) -> str:
    """Markdown for the top of the page: what the model finds, what it was trained on, how well it did (the val
    Dice on its card and every evaluation found in its run folder), and the research-use notice."""
    model = Path(model)
    meta = _card_metadata(model)
    table = getattr(pipe, "label_table", None)
    if table is not None and not table.binary:
        finds = "several structures: " + ", ".join(table.foreground.values())
    else:
        finds = "one structure (the mask)"
    datasets = ", ".join(meta.get("datasets") or []) or "not recorded (no model card)"
    lines = [f"**What it segments**: {finds}. **Trained on**: {datasets}."]
    val = [m["value"] for result in meta.get("model-index") or []
           for res in result.get("results", []) for m in res.get("metrics", []) if m.get("type") == "dice"]
    measured = ([f"val Dice {val[0]:.3f} (the split the model was chosen on)"] if val else []) + _evaluations(model)
    lines.append("**Measured** (per-image, 95% CI):" + ("\n" + "".join(f"\n- {m}" for m in measured) if measured
                 else " no evaluation found beside the model (run `leafseg evaluate`)."))
    lines.append(NOTICE)
    return "\n\n".join(lines)


def overlay_legend(pipe) -> str:
    """Words for the overlay's colours: one-structure models tint the mask in one colour; label maps carry a
    legend strip drawn under the picture."""
    table = getattr(pipe, "label_table", None)
    if table is not None and not table.binary:
        return "**Overlay**: each structure tinted and outlined in its colour, named in the strip under the picture."
    return (f"**Overlay**: <span style='color:{MASK_COLOUR}'>&#9632;</span> the predicted mask, tinted and outlined "
            "in orange-red on the image.")


def build_app(model: str | Path, device: str | None = None, precision: str = "fp32", compile: bool = False):
    """The gradio Blocks page for the saved model folder ``model`` (loaded once, offline)."""
    # users' uploads (gradio's cache too, unless GRADIO_TEMP_DIR says otherwise), series assembled from them and
    # masks to download live in one folder, removed when the server stops (Ctrl-C or SIGTERM)
    workroot = Path(tempfile.mkdtemp(prefix="leafseg-serve-"))
    atexit.register(shutil.rmtree, workroot, ignore_errors=True)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(workroot / "uploads"))  # read when gradio is first imported
    gr = _import_gradio()
    from .pipelines import load_pipeline

    pipe = load_pipeline(model, device, precision=precision, compile=compile)
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
        gr.Markdown(model_description(model, pipe), elem_id="model-description")
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
                picture = gr.Image(label="overlay", type="numpy", format="png", height=600, elem_id="overlay")
                gr.Markdown(overlay_legend(pipe), elem_id="overlay-legend")
                with gr.Row():
                    probability = gr.Image(label="probability", type="numpy", format="png", height=380,
                                           elem_id="probability")
                    uncertainty = gr.Image(label="uncertainty", type="numpy", format="png", height=380,
                                           visible=False, elem_id="uncertainty")
                gr.Markdown(PROBABILITY_LEGEND + "\n\n" + UNCERTAINTY_LEGEND, elem_id="legend")
        button.click(run, [files, steps, ensemble, seed, threshold],
                     [state, picture, probability, uncertainty, slice_index, download, info])
        slice_index.change(show_slice, [state, slice_index], [picture, probability, uncertainty])
    return page


def serve(model: str | Path, host: str = "127.0.0.1", port: int = 7860, device: str | None = None,
          precision: str = "fp32", compile: bool = False) -> None:
    """Serve the page for ``model`` on ``host:port`` until interrupted."""
    page = build_app(model, device, precision, compile)
    logger.info(f"leafseg serve: {model} on http://{host}:{port} (Ctrl+C stops)")
    page.launch(server_name=host, server_port=port, share=False, ssr_mode=False, show_error=True, quiet=True)
