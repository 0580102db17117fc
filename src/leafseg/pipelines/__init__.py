"""Inference pipelines (diffusers ``DiffusionPipeline`` s): ``leaf`` (LeafSegPipeline: single step, DDIM,
ensembles), ``supervised`` (the plain UNet baseline and the MONAI peers), their shared ``image_processor``, and
:func:`load_pipeline`, which opens any saved leafseg model folder offline."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from ..models.weights import assert_finite, read_config, refused_in
from .image_processor import SegmentationImageProcessor, SegmentationPipelineOutput
from .leaf import LeafSegPipeline, LeafSegPipelineOutput
from .precision import resolve_precision, set_precision
from .supervised import MonaiSegPipeline, SupervisedSegPipeline

__all__ = ["LeafSegPipeline", "LeafSegPipelineOutput", "MonaiSegPipeline", "PIPELINES", "SegmentationImageProcessor",
           "SegmentationPipelineOutput", "SupervisedSegPipeline", "load_pipeline"]

PIPELINES = {cls.__name__: cls for cls in (LeafSegPipeline, SupervisedSegPipeline, MonaiSegPipeline)}
#: component modules recorded in model folders saved by leafseg 0.1.0 (before the package was laid out by stage)
LEGACY_MODULES = {"leafseg.convert": "leafseg.models.ldm_unet"}


def load_pipeline(model_dir: str | Path, device: str | None = None, backend: str = "auto", precision: str = "fp32",
                  compile: bool = False):
    """A saved LEAF pipeline or supervised-UNet baseline folder (by model_index.json's class), offline, on
    ``device`` (default: cuda if available), progress bars off; or a folder written by
    ``leafseg export --format onnx``, run by ONNX Runtime (``backend``: ``auto`` picks by the folder, ``torch`` or
    ``onnx`` insist).

    diffusers imports no module just because a folder names it, so leafseg's own component modules are imported
    here, and a module path recorded by an earlier leafseg is mapped to where its class lives now.

    ``precision`` (``fp32``, ``bf16``, ``auto``: bf16 where the device computes it natively): the UNet's and
    mask decoder's dtype, the image encoder stays float32 (:mod:`leafseg.pipelines.precision`); the pipeline's
    ``precision`` attribute says what was chosen. An ONNX export runs in float32 (``bf16`` is refused there,
    ``auto`` gives fp32).

    Args:
        model_dir: a folder written by training (``RUN/model-best``), ``save_pretrained`` or ``leafseg export``.
        device: ``cpu``, ``cuda``, ``cuda:1`` ...; default CUDA when available.
        backend: ``auto`` (by the folder), ``torch`` or ``onnx``.
        precision: ``fp32``, ``bf16`` or ``auto``.
        compile: compile the networks with torch.compile (:mod:`leafseg.pipelines.compilation`): the first image
            pays the compile, later ones run fused kernels; refused for an ONNX export and without a compiler.

    Returns:
        A pipeline (``LeafSegPipeline``, ``SupervisedSegPipeline``, ``MonaiSegPipeline`` or ``OnnxSegPipeline``):
        called on images it returns a :class:`SegmentationPipelineOutput`.

    Raises:
        FileNotFoundError: not a model folder. ValueError: a corrupt or foreign folder, non-finite weights, a wrong
            backend or precision (each message names the folder or file).
    """
    resolve_precision(precision, "cpu")  # a wrong name is refused before anything is loaded
    folder = Path(model_dir)
    if compile and (folder / "leafseg_onnx.json").is_file():
        raise ValueError(f"{folder}: an ONNX export runs in ONNX Runtime, which fuses its own graph; --compile is "
                         "for the saved PyTorch model")
    if backend not in ("auto", "torch", "onnx"):
        raise ValueError(f"backend must be auto, torch or onnx, got {backend!r}")
    exported = (folder / "leafseg_onnx.json").is_file()
    if backend == "onnx" and not exported:
        raise ValueError(f"{folder}: not an exported model; export it first: leafseg export --model {folder} "
                         "--format onnx --output FOLDER")
    if exported:
        if backend == "torch":
            raise ValueError(f"{folder}: an ONNX export; give the saved PyTorch model for --backend torch")
        from .onnx import OnnxSegPipeline

        if precision == "bf16":
            raise ValueError(f"{folder}: an ONNX export runs in float32; use --precision fp32 (or auto), or the "
                             "saved PyTorch model for bf16")
        threads = torch.get_num_threads()
        pipe = OnnxSegPipeline(folder, threads)
        pipe.precision = "fp32"
        return pipe
    index = folder / "model_index.json"
    if not index.is_file():
        old = folder.with_name(folder.name + ".old")
        hint = (f"; {old} holds the previous one (a swap was interrupted: `leafseg train --resume` finishes it, or "
                f"use that folder)" if (old / "model_index.json").is_file() else "")
        raise FileNotFoundError(f"{index}: not a saved leafseg pipeline folder{hint}")
    entries = read_config(folder, "model_index.json")
    name = entries.get("_class_name") if isinstance(entries, dict) else None
    if name not in PIPELINES:
        raise ValueError(f"{index}: pipeline class {name!r} is not one of {sorted(PIPELINES)}")
    for component, value in entries.items():
        if component.startswith("_") or not (isinstance(value, list) and len(value) == 2):
            continue
        library = value[0]
        if library is None:  # an optional component saved as absent ([null, null])
            continue
        if library in LEGACY_MODULES:  # the old module path resolves to where the class lives now
            sys.modules.setdefault(library, importlib.import_module(LEGACY_MODULES[library]))
        elif not (isinstance(library, str) and (library == "diffusers" or library.startswith("leafseg."))):
            # from_pretrained would import whatever module the file names: only the two libraries a leafseg model
            # is made of are allowed
            raise ValueError(f"{index}: component {component!r} comes from {library!r}; a leafseg model's parts "
                             "come from diffusers or leafseg")
        elif library.startswith("leafseg."):
            try:
                importlib.import_module(library)
            except ImportError:
                raise ValueError(f"{index}: component {component!r} names the module {library!r}, which this "
                                 f"leafseg version does not have") from None
    try:
        diffusers_logging.disable_progress_bar()  # "Loading pipeline components" on every call is noise here
        pipe = PIPELINES[name].from_pretrained(folder, local_files_only=True)
    except (OSError, RuntimeError) as err:  # truncated or corrupt weight files, among others
        refused = refused_in(err, sorted(folder.rglob("*.bin")))  # torch's weights-only loading said no
        if refused is not None:
            raise refused from None
        raise ValueError(f"{folder}: could not load the saved model ({type(err).__name__}: {err})") from None
    for component_name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            assert_finite(component, f"{folder / component_name}")
    pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe.precision = set_precision(pipe, precision)
    pipe.set_progress_bar_config(disable=True)
    pipe.compiled = None
    if compile:
        from .compilation import compile_pipeline

        compile_pipeline(pipe)
    return pipe
