"""Inference speed of leafseg on this machine: per part and whole pipeline, per backend, with the cost floor.

Two architectures, random weights (speed does not depend on them):
  * paper: the LEAF paper's networks -- LDM LSUN-Churches UNet (295 M parameters, 8 -> 4 channels after widening),
    CompVis kl-f8 autoencoder (its encoder copy as image encoder, its decoder for the mask), 256 x 256;
  * laptop: the `cpu` recipe -- TAEF2 autoencoder and the recipe's UNet, 128 x 128.
Backends: fp32 eager PyTorch, channels-last PyTorch, bf16 (`--precision bf16`: UNet and mask decoder in bf16,
channels-last, image encoder fp32), bf16_all (the image encoder in bf16 too), compiled and bf16_compiled (fp32 / bf16
with the networks compiled by torch.compile's inductor, `--compile`; the compile time of the first call at batch 1
and at the batch size apart, with inductor's kernel cache as it is: run twice to see a warm cache), ONNX Runtime
(`leafseg export`), and OpenVINO running the same ONNX files in f32 and bf16 (`openvino`, `openvino_bf16`; only where
the `openvino` package can be imported: it is not one of leafseg's dependencies). Each backend's masks are compared
(Dice) with fp32 eager's on real CVC-ClinicDB frames, so a faster path that changes the answer shows it.
The floor: the FLOP count of each part and this machine's measured fp32 matmul rate.

    .venv/bin/python benchmarks/speed.py                       # both architectures, every backend (minutes)
    .venv/bin/python benchmarks/speed.py --arch laptop --repeats 5

Each configuration runs in its own process, so peak RSS is its own. Timings: median of --repeats after a warm-up.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LEAFSEG_SHARED", REPO.parent / "shared"))
BACKENDS = ("fp32", "channels_last", "bf16", "bf16_all", "compiled", "bf16_compiled", "onnxruntime", "openvino",
            "openvino_bf16")


# ------------------------------------------------------------------------------------------------ the models

def build_pipeline(arch: str):
    """A LeafSegPipeline of the architecture with random weights (seeded), eval mode, fp32, CPU."""
    import torch

    from leafseg.config import load_config
    from leafseg.conversion import kl_vae_config_from_state_dict, ldm_unet_config_from_state_dict
    from leafseg.diffusion import make_scheduler
    from leafseg.models import autoencoder as ae_ops
    from leafseg.models.denoiser import widen_input_conv
    from leafseg.models.image_encoder import ImageEncoder
    from leafseg.models.ldm_unet import unet_from_config
    from leafseg.pipelines import LeafSegPipeline
    from leafseg.training.leaf import build_components

    torch.manual_seed(0)
    if arch == "paper":
        keys = json.loads((SHARED / "reference" / "ldm_full_size_keys.json").read_text())
        ae = ae_ops.load_autoencoder("kl", config=kl_vae_config_from_state_dict(keys["kl_f8_vae"]["keys"]),
                                     scaling_factor=0.18215)
        unet = widen_input_conv(unet_from_config(ldm_unet_config_from_state_dict(
            keys["ldm_lsun_churches_unet"]["keys"])))
        pipe = LeafSegPipeline(ae, ImageEncoder.from_autoencoder(ae), unet, make_scheduler("sample"))
    else:
        cfg = load_config("cpu", ["data.root=unused", f"autoencoder.path={SHARED / 'weights' / 'taef2'}"])
        c = build_components(cfg)
        pipe = LeafSegPipeline(c["autoencoder"], c["image_encoder"], c["unet"], c["scheduler"])
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.autoencoder, pipe.image_encoder, pipe.unet):
        m.eval()
    return pipe


def cvc_images(n: int):
    from leafseg import data as D

    pairs = D.find_dataset(SHARED / "data" / "cvc-clinicdb", "cvc-clinicdb")[:n]
    return [D.load_image(p.image) for p in pairs]


# ------------------------------------------------------------------------------------------------ one config

class _OpenVinoSession:
    """The ``run`` method of an ONNX Runtime InferenceSession over an OpenVINO compiled model of the same ONNX file,
    so the ONNX pipeline runs on it unchanged (benchmark only)."""

    def __init__(self, path: Path, bf16: bool):
        import openvino as ov
        import torch

        self.model = ov.Core().compile_model(str(path), "CPU", {
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
            "INFERENCE_NUM_THREADS": torch.get_num_threads()})

    def run(self, _outputs, feeds: dict) -> list:
        result = self.model(feeds)
        return [result[out] for out in self.model.outputs]


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls that are not timed."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(arch: str, backend: str, repeats: int, batch: int, n_images: int, out: Path) -> dict:
    """Runs in its own process: times, peak RSS and masks of one (architecture, backend)."""
    import resource

    import numpy as np
    import torch

    pipe = build_pipeline(arch)
    r = pipe.resolution
    x1 = torch.rand(1, 3, r, r) * 2 - 1
    xb = torch.rand(batch, 3, r, r) * 2 - 1
    images = cvc_images(n_images)
    result = {"arch": arch, "backend": backend, "resolution": r, "threads": torch.get_num_threads()}
    if backend in ("onnxruntime", "openvino", "openvino_bf16"):
        from leafseg.pipelines.onnx import export_onnx

        folder = Path(tempfile.mkdtemp(prefix="leafseg-onnx-"))
        export_onnx(pipe, folder)
        from leafseg.pipelines import load_pipeline

        runner = load_pipeline(folder)
        if backend.startswith("openvino"):
            runner.sessions = {name: _OpenVinoSession(folder / f"{name}.onnx", backend.endswith("bf16"))
                               for name in runner.sessions}
        zx = runner.sessions["encode"].run(None, {"images": x1.numpy()})[0]
        noise = np.random.default_rng(0).standard_normal(zx.shape).astype(np.float32)
        result["encoder_s"] = median_time(lambda: runner.sessions["encode"].run(None, {"images": x1.numpy()}),
                                           repeats)
        result["unet_decoder_s"] = median_time(
            lambda: runner.sessions["denoise_decode"].run(None, {"zx": zx, "noise": noise}), repeats)
        call = runner
    else:
        if backend == "channels_last":
            for m in (pipe.autoencoder, pipe.image_encoder, pipe.unet):
                m.to(memory_format=torch.channels_last)
        if backend in ("bf16", "bf16_all", "bf16_compiled"):
            from leafseg.pipelines.precision import BF16_PARTS, CASTABLE_PARTS, set_precision

            set_precision(pipe, "bf16", CASTABLE_PARTS if backend == "bf16_all" else BF16_PARTS)
        if backend.endswith("compiled"):
            from leafseg.pipelines.compilation import compile_pipeline

            compile_pipeline(pipe)
            with torch.inference_mode():  # the first call compiles each network: its time apart
                start = time.perf_counter()
                pipe(list(x1 * 0.5 + 0.5))
                result["first_call_s"] = time.perf_counter() - start
                start = time.perf_counter()
                pipe(list(xb * 0.5 + 0.5), batch_size=batch)  # another batch size: compiled again
                result["first_batch_call_s"] = time.perf_counter() - start
        from leafseg.models import autoencoder as ae_ops

        with torch.inference_mode():
            fmt = torch.contiguous_format if backend in ("fp32", "compiled") else torch.channels_last
            x = x1.contiguous(memory_format=fmt).to(pipe.image_encoder.dtype)
            zx = (pipe.image_encoder(x) * ae_ops.latent_scale(pipe.autoencoder)).to(pipe.unet.dtype)
            z = torch.randn_like(zx)
            z_dec = z.to(next(pipe.autoencoder.parameters()).dtype)
            result["encoder_s"] = median_time(lambda: pipe.image_encoder(x), repeats)
            result["unet_s"] = median_time(lambda: pipe.unet(torch.cat([zx, z], 1), 999), repeats)
            result["decoder_s"] = median_time(lambda: ae_ops.decode(pipe.autoencoder, z_dec), repeats)
        call = pipe
    with torch.inference_mode():
        result["pipeline_b1_s"] = median_time(lambda: call(list(x1 * 0.5 + 0.5)), repeats)
        result["pipeline_batch_img_per_s"] = batch / median_time(lambda: call(list(xb * 0.5 + 0.5),
                                                                                batch_size=batch), repeats)
        masks = call(images, batch_size=batch).masks
    np.savez_compressed(out, *masks)
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return result


# --------------------------------------------------------------------------------------------------- floor

def flops_per_part(arch: str) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from leafseg.models import autoencoder as ae_ops

    pipe = build_pipeline(arch)
    r = pipe.resolution
    x = torch.rand(1, 3, r, r) * 2 - 1
    out = {}
    with torch.inference_mode():
        zx = pipe.image_encoder(x)
        for name, fn in (("encoder", lambda: pipe.image_encoder(x)),
                         ("unet", lambda: pipe.unet(torch.cat([zx, zx], 1), 999)),
                         ("decoder", lambda: ae_ops.decode(pipe.autoencoder, zx))):
            with FlopCounterMode(display=False) as counter:
                fn()
            out[name] = counter.get_total_flops() / 1e9
    return out


def matmul_peak() -> float:
    """fp32 GFLOP/s of a 3072^2 matmul, median of 7 after 3 warm-ups (a fresh process's first products run slow)."""
    import torch

    n = 3072
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    return 2 * n ** 3 / median_time(lambda: a @ b, 7) / 1e9


def low_precision_units() -> str:
    """Which reduced-precision instructions this CPU has: bf16 is only worth offering where the hardware runs it."""
    flags = set()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni")
    have = [f for f in wanted if f in flags]
    missing = [f for f in wanted if f not in flags]
    return f"has {' '.join(have) or 'none of them'}; lacks {' '.join(missing) or 'nothing'}"


def cpu_description() -> str:
    """The CPU with its family / model and the vector units that decide its speed here ("AMD EPYC" alone names
    CPUs 2.7x apart per training step), e.g. "AMD EPYC (family 25 model 17, AVX-512 bf16)"."""
    info = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines()[:40] if Path("/proc/cpuinfo").exists() else []:
        if ":" in line:
            key, value = line.split(":", 1)
            info.setdefault(key.strip(), value.strip())
    if "model name" not in info:
        return platform.processor() or platform.machine()
    flags = info.get("flags", "").split()
    units = [name for flag, name in (("avx512f", "AVX-512"), ("avx512_bf16", "bf16"), ("amx_bf16", "AMX"))
             if flag in flags] or (["AVX2"] if "avx2" in flags else [])
    return (f"{info['model name']} (family {info.get('cpu family', '?')} model {info.get('model', '?')}, "
            f"{' '.join(units) or 'no AVX2'})")


def machine() -> str:
    """The CPU (:func:`cpu_description`), the logical CPUs, torch and its threads."""
    import torch

    return (f"{cpu_description()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


# ---------------------------------------------------------------------------------------------------- main

def dice_vs_reference(ref: Path, other: Path) -> float:
    import numpy as np

    a, b = np.load(ref), np.load(other)
    scores = []
    for k in a.files:
        p, g = b[k], a[k]
        s = p.sum() + g.sum()
        scores.append(1.0 if s == 0 else 2 * (p & g).sum() / s)
    return float(np.mean(scores))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="*", default=["paper", "laptop"], choices=["paper", "laptop"])
    ap.add_argument("--backend", nargs="*", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--images", type=int, default=8, help="CVC-ClinicDB frames for the mask comparison")
    ap.add_argument("--one", nargs=2, metavar=("ARCH", "BACKEND"), help=argparse.SUPPRESS)  # child process
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        res = measure(*args.one, args.repeats, args.batch, args.images, Path(args.out + ".npz"))
        Path(args.out + ".json").write_text(json.dumps(res))
        return
    work = Path(tempfile.mkdtemp(prefix="leafseg-speed-"))
    print(f"machine: {machine()}; fp32 matmul {matmul_peak():.0f} GFLOP/s (3072^2, median of 7)")
    print(f"CPU vector units: {low_precision_units()}")
    from leafseg.pipelines.precision import bf16_is_fast, resolve_precision

    print(f"bf16 computed natively: {bf16_is_fast('cpu')}; `--precision auto` picks "
          f"{resolve_precision('auto', 'cpu')} here")
    for arch in args.arch:
        flops = flops_per_part(arch)
        print(f"\n## {arch}: GFLOP per image -- encoder {flops['encoder']:.1f}, UNet {flops['unet']:.1f}, "
              f"decoder {flops['decoder']:.1f}, total {sum(flops.values()):.1f}")
        print("| backend | encoder s | UNet s | decoder s | pipeline s/image (b1) | images/s (batch "
              f"{args.batch}) | GFLOP/s (b1) | peak RSS GiB | mask Dice vs fp32 | compile s (b1 + batch) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for backend in args.backend:
            if backend.startswith("openvino") and importlib.util.find_spec("openvino") is None:
                print(f"| {backend} | not measured: the openvino package is not importable here |||||||")
                continue
            stem = str(work / f"{arch}-{backend}")
            subprocess.run([sys.executable, __file__, "--one", arch, backend, "--out", stem, "--repeats",
                            str(args.repeats), "--batch", str(args.batch), "--images", str(args.images)], check=True)
            r = json.loads(Path(stem + ".json").read_text())
            dice = dice_vs_reference(Path(str(work / f"{arch}-fp32") + ".npz"), Path(stem + ".npz")) \
                if "fp32" in args.backend else float("nan")
            unet = r.get("unet_s")
            parts = (f"{r['encoder_s']:.3f} | {unet:.3f} | {r['decoder_s']:.3f}" if unet is not None
                     else f"{r['encoder_s']:.3f} | {r['unet_decoder_s']:.3f} (UNet + decoder) | ")
            compile_s = (f"{r['first_call_s'] - r['pipeline_b1_s']:.0f} + "
                         f"{r['first_batch_call_s'] - args.batch / r['pipeline_batch_img_per_s']:.0f}"
                         if "first_call_s" in r else "")
            print(f"| {backend} | {parts} | {r['pipeline_b1_s']:.3f} | {r['pipeline_batch_img_per_s']:.2f} | "
                  f"{sum(flops.values()) / r['pipeline_b1_s']:.0f} | {r['peak_rss_gib']:.2f} | {dice:.4f} | "
                  f"{compile_s} |", flush=True)


if __name__ == "__main__":
    main()
