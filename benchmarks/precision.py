"""Inference precision on a trained model: speed of fp32 and bf16 (`--precision bf16`: the UNet and mask decoder in
bf16, channels-last on the CPU; image encoder fp32), the masks' agreement with fp32's, and each one's per-image Dice
against the ground truth.
With --parts, also each network in bf16 alone (and the mask decoder too), to see which part moves the masks.

    python benchmarks/precision.py --model runs/cvc/model-best --data ../shared/data/cvc-clinicdb \
        --layout cvc-clinicdb --split-file benchmarks/splits/cvc-clinicdb.json --split test [--parts]

Prints a table and which precision `--precision auto` picks on this machine. Timings: wall time of the pipeline call
over the whole split in batches of --batch (images already decoded), median of --repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from leafseg import data as D
from leafseg.metrics import dice
from leafseg.pipelines import load_pipeline
from leafseg.pipelines.precision import BF16_PARTS, bf16_is_fast, resolve_precision, set_precision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import cpu_description  # noqa: E402


def _openvino_pipeline(model: str, bf16: bool):
    """The model exported to ONNX (`leafseg export`), its two graphs run by OpenVINO instead of ONNX Runtime."""
    import tempfile

    from speed import _OpenVinoSession

    from leafseg.pipelines.onnx import export_onnx

    folder = Path(tempfile.mkdtemp(prefix="leafseg-openvino-"))
    export_onnx(load_pipeline(model, "cpu"), folder)
    pipe = load_pipeline(folder)
    pipe.sessions = {name: _OpenVinoSession(folder / f"{name}.onnx", bf16) for name in pipe.sessions}
    return pipe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--layout", default="folder")
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--parts", action="store_true",
                    help="also bf16 per network: encoder, UNet, decoder, and combinations")
    ap.add_argument("--openvino", action="store_true",
                    help="also the model exported to ONNX and run by OpenVINO in f32 and bf16 (needs openvino)")
    args = ap.parse_args(argv)
    pairs = D.find_dataset(args.data, args.layout)
    chosen = D.select(pairs, D.read_split(args.split_file, [p.stem for p in pairs])[args.split])
    images = [D.load_image(p.image) for p in chosen]
    truths = [D.load_mask(p.mask, p.mask_rule) for p in chosen]
    print(f"{cpu_description()}, {torch.get_num_threads()} threads, torch {torch.__version__}; bf16 units: "
          f"{bf16_is_fast(args.device)}; --precision auto picks {resolve_precision('auto', args.device)}")
    print(f"{len(images)} images of {args.data} ({args.split}), batch {args.batch}")
    variants = [("fp32", ()), ("bf16 (`--precision bf16`: UNet + mask decoder)", BF16_PARTS)]
    if args.parts:
        variants += [("bf16 image encoder only", ("image_encoder",)), ("bf16 UNet only", ("unet",)),
                     ("bf16 mask decoder only", ("autoencoder",)),
                     ("bf16 encoder + UNet", ("image_encoder", "unet")),
                     ("bf16 encoder + UNet + mask decoder", ("image_encoder", "unet", "autoencoder"))]
    if args.openvino:
        variants += [("OpenVINO f32 (ONNX export)", "f32"), ("OpenVINO bf16 (ONNX export, whole graph)", "bf16")]
    rows, reference = [], None
    for name, parts in variants:
        if name.startswith("OpenVINO"):
            pipe = _openvino_pipeline(args.model, parts == "bf16")
        else:
            pipe = load_pipeline(args.model, args.device)  # afresh: a bf16 round trip would round the fp32 weights
            set_precision(pipe, "bf16" if parts else "fp32", parts)
        pipe(images[: args.batch], batch_size=args.batch)  # warm-up (oneDNN kernels for the shapes)
        times, out = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = pipe(images, batch_size=args.batch)
            times.append(time.perf_counter() - t)
        masks = out.masks
        if reference is None:
            reference = masks
        agreement = float(np.mean([dice(a, b) for a, b in zip(masks, reference)]))
        score = float(np.mean([dice(m, g) for m, g in zip(masks, truths)]))
        rows.append((name, statistics.median(times) / len(images), agreement, score))
    print("| precision | s/image | masks Dice vs fp32 | Dice vs ground truth |")
    print("|---|---|---|---|")
    for precision, s, agreement, score in rows:
        print(f"| {precision} | {s:.4f} | {agreement:.4f} | {score:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
