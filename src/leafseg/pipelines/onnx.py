"""Exported pipelines: a saved model as ONNX graphs, run with ONNX Runtime (``leafseg export --format onnx``,
``leafseg predict/evaluate --backend onnx``).

A LEAF model becomes two graphs, so that an ensemble encodes its image once: ``encode.onnx`` (image in [-1, 1] ->
scaled image latent z^x) and ``denoise_decode.onnx`` ((z^x, z_T) -> soft mask: the UNet once at t = T - 1, x0_hat by
the parameterisation, clamped when the scheduler clips, decoded, mean over channels). A deterministic segmenter (the
UNet baseline, a MONAI peer) is one graph, ``segment.onnx`` (image -> foreground probability). Only the inference
networks are exported (no projector, no teacher). Single step only: multi-step DDIM stays with the PyTorch pipeline.
The noise is drawn exactly as the PyTorch pipeline draws it, so both give the same masks up to float rounding.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from ..files import read_json, write_json
from .flips import flipped_views, merge_views
from .frame_decision import FrameDecision, stored_decision
from .image_processor import SegmentationImageProcessor, SegmentationPipelineOutput

MANIFEST = "leafseg_onnx.json"


class _EncodeImage(torch.nn.Module):
    def __init__(self, pipe):
        super().__init__()
        from ..models import autoencoder as ae_ops

        self.image_encoder, self.scale = pipe.image_encoder, ae_ops.latent_scale(pipe.autoencoder)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images) * self.scale


class _DenoiseDecode(torch.nn.Module):
    """(z^x, z_T) -> soft mask (B, R, R) in [0, 1], as LeafSegPipeline's single step."""

    def __init__(self, pipe):
        super().__init__()
        from ..models import autoencoder as ae_ops

        self.unet, self.autoencoder, self.ae_ops = pipe.unet, pipe.autoencoder, ae_ops
        sc = pipe.scheduler.config
        self.t = int(sc.num_train_timesteps) - 1
        abar = float(pipe.scheduler.alphas_cumprod[self.t])
        self.sqrt_abar, self.sqrt_1m = abar ** 0.5, (1 - abar) ** 0.5
        self.kind, self.scale = sc.prediction_type, ae_ops.latent_scale(pipe.autoencoder)
        self.clip = float(sc.clip_sample_range) if sc.clip_sample else None

    def forward(self, zx: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        t = torch.full((zx.shape[0],), self.t, dtype=torch.long)
        out = self.unet(torch.cat([zx, z], dim=1), t).sample
        if self.kind == "sample":
            x0 = out
        elif self.kind == "epsilon":
            x0 = (z - self.sqrt_1m * out) / self.sqrt_abar
        else:
            x0 = self.sqrt_abar * z - self.sqrt_1m * out
        if self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        decoded = self.ae_ops.decode(self.autoencoder, x0 / self.scale)
        return ((decoded + 1) / 2).mean(dim=1)


class _Segment(torch.nn.Module):
    """A deterministic segmenter (the UNet baseline, a MONAI peer): images -> foreground probabilities."""

    def __init__(self, pipe):
        super().__init__()
        self.pipe = pipe
        self.networks = torch.nn.ModuleList(m for m in pipe.components.values() if isinstance(m, torch.nn.Module))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pipe.foreground_probability(images)


def _export(module: torch.nn.Module, inputs: tuple, names: list[str], path: Path | io.BytesIO, opset: int) -> None:
    axes = {n: {0: "batch"} for n in [*names, "output"]}
    target = str(path) if isinstance(path, Path) else path
    torch.onnx.export(module.eval(), inputs, target, input_names=names, output_names=["output"],
                      dynamic_axes=axes, opset_version=opset, dynamo=False)


@contextlib.contextmanager
def _stdout_to_devnull():
    """File descriptor 1 to /dev/null for the block: also silences C++ writers, which ``redirect_stdout`` cannot."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


class OnnxFunction:
    """A frozen module run by ONNX Runtime on the CPU: ``OnnxFunction(module, example)(x)`` == ``module(x)`` up to
    float rounding, for float32 ``x`` shaped like ``example`` except in the batch size. Exported in memory (the
    legacy TorchScript exporter, as ``leafseg export``), nothing written to disk. Training uses it for its frozen
    caches, where ONNX Runtime is 1.5-1.9x faster than PyTorch on a CPU (experiments/cpu-recipe/README.md)."""

    def __init__(self, module: torch.nn.Module, example: torch.Tensor, threads: int | None = None, opset: int = 17):
        import onnxruntime as ort

        self.sample_shape = tuple(example.shape[1:])
        buffer = io.BytesIO()
        # tracer and exporter chatter: the shape check below covers what the warnings are about, and a failure
        # raises (the dump of the whole graph that torch's C++ logger writes to stdout on failure says nothing more)
        with warnings.catch_warnings(), _stdout_to_devnull(), torch.no_grad():
            warnings.simplefilter("ignore")
            _export(module, (example.detach().float().cpu(),), ["input"], buffer, opset)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # no spinning: training calls these between PyTorch ops, and threads left spinning after a run take the
        # cores from the step (per-batch teacher tokens 174 -> 118 ms a step with it off, cpu-polyp, 2 Zen 4 cores)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"OnnxFunction was exported for inputs (B, {', '.join(map(str, self.sample_shape))}), "
                             f"got {tuple(x.shape)}")
        out = self.session.run(None, {"input": x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out)


@torch.no_grad()
def export_onnx(pipe, output: str | Path, opset: int = 17, source: str | None = None) -> Path:
    """Write the ONNX graphs of a loaded pipeline (CPU, float32) and their manifest into ``output``."""
    from .leaf import LeafSegPipeline

    if pipe.config.get("labels"):  # the ONNX runner reads one foreground probability
        raise ValueError(f"{source or 'this model'}: segments several structures; ONNX export covers one-structure "
                         "models so far (predict and serve the saved model folder instead)")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    pipe = pipe.to("cpu", torch.float32)
    r = pipe.resolution
    image = torch.zeros(1, 3, r, r)
    manifest = {"format": "onnx", "resolution": r, "intensity": pipe.config.get("intensity"),
                "slice_axis": int(pipe.config.get("slice_axis", 2)), "source": source, "opset": opset,
                "frame_decision": pipe.config.get("frame_decision")}
    if isinstance(pipe, LeafSegPipeline):
        enc = _EncodeImage(pipe)
        zx = enc(image)
        _export(enc, (image,), ["images"], out / "encode.onnx", opset)
        _export(_DenoiseDecode(pipe), (zx, torch.zeros_like(zx)), ["zx", "noise"], out / "denoise_decode.onnx", opset)
        manifest.update(kind="leaf", latent_shape=list(zx.shape[1:]), prediction_type=pipe.prediction_type)
    else:
        _export(_Segment(pipe), (image,), ["images"], out / "segment.onnx", opset)
        manifest.update(kind="supervised")
    write_json(manifest, out / MANIFEST)
    return out


class OnnxSegPipeline:
    """An exported model run by ONNX Runtime, with the PyTorch pipelines' call signature and output."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = read_json(self.folder / MANIFEST, "leafseg ONNX manifest")
        self.resolution = int(self.manifest["resolution"])
        self.config = {"intensity": self.manifest.get("intensity"), "slice_axis": self.manifest.get("slice_axis", 2),
                       "frame_decision": self.manifest.get("frame_decision")}
        FrameDecision.from_config(self.config["frame_decision"])
        self.device = "cpu (onnxruntime)"
        self.supports_multistep = False  # the exported graphs hold LEAF's single step
        self.supports_ensembles = self.manifest["kind"] == "leaf"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        names = ["encode", "denoise_decode"] if self.manifest["kind"] == "leaf" else ["segment"]
        self.sessions = {n: ort.InferenceSession(str(self.folder / f"{n}.onnx"), options,
                                                 providers=["CPUExecutionProvider"]) for n in names}
        self.image_processor = SegmentationImageProcessor(self.resolution)

    def set_progress_bar_config(self, **kwargs) -> None:  # pipeline interface; nothing to show
        pass

    def _soft_masks(self, x: np.ndarray, ensemble_size: int, seed: int) -> np.ndarray:
        """(B, 3, R, R) -> (E, B, R, R) soft masks."""
        if self.manifest["kind"] != "leaf":
            return self.sessions["segment"].run(None, {"images": x})[0][None]
        zx = self.sessions["encode"].run(None, {"images": x})[0]
        out = []
        for k in range(ensemble_size):  # the PyTorch pipeline's noise: one draw per member, shared by the batch
            noise = torch.randn(tuple(self.manifest["latent_shape"]), generator=torch.Generator().manual_seed(seed + k))
            z = np.ascontiguousarray(np.broadcast_to(noise.numpy(), zx.shape))
            out.append(self.sessions["denoise_decode"].run(None, {"zx": zx, "noise": z})[0])
        return np.stack(out)

    def __call__(self, image, num_inference_steps: int = 1, ensemble_size: int = 1, seed: int = 0, generator=None,
                 threshold: float = 0.5, batch_size: int = 8, flip_tta: bool = False, frame_decision: bool = True,
                 return_dict: bool = True):
        if num_inference_steps != 1 or generator is not None:
            raise ValueError("the ONNX backend runs LEAF's single step only (num_inference_steps=1, seeds by `seed`); "
                             "use the PyTorch model for multi-step DDIM")
        if ensemble_size < 1 or (ensemble_size > 1 and self.manifest["kind"] != "leaf"):
            raise ValueError("ensemble_size must be >= 1 (and 1 for the deterministic supervised baseline)")
        images, sizes = self.image_processor.preprocess(image)
        chunks = []
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            chunk = flipped_views(chunk) if flip_tta else chunk
            soft = torch.from_numpy(self._soft_masks(chunk.numpy(), ensemble_size, seed))
            chunks.append(merge_views(soft) if flip_tta else soft)
        soft = torch.cat(chunks, dim=1)
        output = self.image_processor.postprocess(soft.mean(0), soft.std(0, unbiased=False) if ensemble_size > 1
                                                  else None, sizes, threshold, stored_decision(self, frame_decision))
        return output if return_dict else (output.masks, output.probabilities, output.uncertainty)


__all__ = ["MANIFEST", "OnnxSegPipeline", "SegmentationPipelineOutput", "export_onnx"]
