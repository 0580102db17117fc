"""What torch.compile variants buy on a CPU, beyond `--compile` (experiments/speed/README.md, "Compile variants").

Each part runs in its own process (a compiled graph or a thread pool left by one row must not time the next), alone
on the machine, random weights of the `cpu` recipe's networks (128 px) unless said:

  inference    the laptop pipeline at batch 1 and 4: fp32 / bf16, eager / compiled / compiled with inductor's
               ``freezing`` (weights folded in as constants, oneDNN weight prepacking)
  training     one training step (benchmarks/train_speed.py's): eager, and the whole LeafTrainingModel compiled in one
               torch.compile call (instead of the image encoder and each UNet block apart, as train.compile does);
               with --profile, the share of the step's self CPU time spent in oneDNN convolutions (forward and
               backward), which no compile variant changes
  tinyvit      LiteMedSAM's TinyViT at 128 px, batch 4 (the image_encoder.condition branch's frozen forward):
               fp32, bf16 autocast, ONNX Runtime, compiled bf16, compiled bf16 with freezing
  graph-break  whether diffusers' Upsample2D (its bf16 branch calls is_torch_version) breaks a compiled graph
  peak         the bf16 and fp32 rates of one large matmul and one 64-channel 3x3 convolution at 128 px: what the
               arithmetic of a network can at best run at here

    python experiments/speed/compile_variants.py --json experiments/speed/records/compile-variants-zen4.json
    python experiments/speed/compile_variants.py --parts inference tinyvit
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks this study builds on
from speed import build_pipeline, median_time  # noqa: E402
PARTS = ("graph-break", "peak", "tinyvit", "inference", "training")
INFERENCE_VARIANTS = ("fp32", "compiled", "compiled_frozen", "bf16", "bf16_compiled", "bf16_compiled_frozen")
TRAINING_VARIANTS = (("eager", "bf16"), ("whole", "bf16"), ("eager", "no"), ("whole", "no"))


def _median_time(fn, repeats: int) -> float:
    return median_time(fn, repeats, warmup=2)


# ------------------------------------------------------------------------------------------------ children

def graph_break() -> dict:
    import torch
    import torch._dynamo as dynamo
    from diffusers.models.upsampling import Upsample2D

    block, x = Upsample2D(64, use_conv=True), torch.randn(2, 64, 16, 16)
    out = {}
    for name, inp in (("bf16 input", x.bfloat16()), ("fp32 input", x)):
        with torch.autocast("cpu", torch.bfloat16):
            explained = dynamo.explain(block)(inp)
        out[name] = {"graphs": explained.graph_count, "graph_breaks": explained.graph_break_count,
                     "reasons": [str(b.reason)[:200] for b in explained.break_reasons]}
    return out


def peak() -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    out = {}
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    for dtype in (torch.float32, torch.bfloat16):
        a_, b_ = a.to(dtype), b.to(dtype)
        s = _median_time(lambda a_=a_, b_=b_: a_ @ b_, 5)
        out[f"matmul {n} {str(dtype)[6:]} GFLOP/s"] = 2 * n ** 3 / s / 1e9
    x = torch.randn(4, 64, 128, 128).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3).contiguous(memory_format=torch.channels_last)
    flops = 2 * 4 * 64 * 64 * 9 * 128 * 128
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            x_, w_ = x.to(dtype), w.to(dtype)
            s = _median_time(lambda x_=x_, w_=w_: F.conv2d(x_, w_, padding=1), 5)
            out[f"conv 64->64 3x3 128px b4 channels-last {str(dtype)[6:]} GFLOP/s"] = flops / s / 1e9
    return out


def tinyvit() -> dict:
    import torch

    from leafseg.models.semantic_condition import SemanticCondition
    from leafseg.pipelines.onnx import OnnxFunction

    torch.manual_seed(0)
    encoder = SemanticCondition(32, 8, 128).load_lite_medsam().eval().encoder
    x = torch.rand(4, 3, 128, 128)
    out = {}
    with torch.no_grad():
        out["fp32 eager s"] = _median_time(lambda: encoder(x), 7)
        with torch.autocast("cpu", torch.bfloat16):
            out["bf16 eager s"] = _median_time(lambda: encoder(x), 7)
        onnx = OnnxFunction(encoder, x)
        out["onnxruntime fp32 s"] = _median_time(lambda: onnx(x), 7)
        for name, options in (("bf16 compiled", None), ("bf16 compiled frozen", {"freezing": True})):
            compiled = torch.compile(encoder, backend="inductor", options=options)
            with torch.autocast("cpu", torch.bfloat16):
                start = time.perf_counter()
                compiled(x)
                out[f"{name} first call s"] = time.perf_counter() - start
                out[f"{name} s"] = _median_time(lambda compiled=compiled: compiled(x), 7)
            torch._dynamo.reset()
    return out


def inference(variant: str) -> dict:
    import torch

    from leafseg.pipelines.compilation import compiled_parts, kernel_cache
    from leafseg.pipelines.precision import BF16_PARTS, set_precision

    torch.manual_seed(0)
    pipe = build_pipeline("laptop")
    r = pipe.resolution
    x1, x4 = torch.rand(1, 3, r, r), torch.rand(4, 3, r, r)
    if variant.startswith("bf16"):
        set_precision(pipe, "bf16", BF16_PARTS)
    if "compiled" in variant:
        kernel_cache()
        options = {"freezing": True} if variant.endswith("frozen") else None
        for module in compiled_parts(pipe).values():
            module.compile(backend="inductor", options=options)
    out = {}
    with torch.inference_mode():
        start = time.perf_counter()
        pipe(list(x1))
        out["first call b1 s"] = time.perf_counter() - start
        start = time.perf_counter()
        pipe(list(x4), batch_size=4)
        out["first call b4 s"] = time.perf_counter() - start
        out["b1 s/image"] = _median_time(lambda: pipe(list(x1)), 5)
        out["b4 images/s"] = 4 / _median_time(lambda: pipe(list(x4), batch_size=4), 5)
    return out


def training(mode: str, precision: str, profile: bool) -> dict:
    import torch

    import train_speed

    import leafseg.pipelines.compilation as compilation
    import leafseg.training.leaf as leaf
    import leafseg.training.optimisation as optimisation

    if mode == "whole":
        built = leaf.LeafTrainingModel

        def whole(*args, **kwargs):
            model = built(*args, **kwargs)
            compilation.compile_module(model)
            return model

        leaf.LeafTrainingModel = whole
        compilation.compile_for_training = lambda encoder, unet: 0
    out = {}
    if profile:  # three steps after the warm-up under torch.profiler
        profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        calls, step = [0], optimisation.optimisation_step

        def counted(*args, **kwargs):
            result = step(*args, **kwargs)
            calls[0] += 1
            if calls[0] == 3:
                profiler.__enter__()
            elif calls[0] == 6:
                profiler.__exit__(None, None, None)
            return result

        optimisation.optimisation_step = counted  # measure() imports it when called
        train_speed.measure("laptop", precision, "cpu", steps=3, warmup=3, batch=None, compile=mode != "eager")
        events = profiler.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        conv = sum(e.self_cpu_time_total for e in events
                   if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward"))
        out["convolution share of self CPU time"] = conv / total
        return out
    r = train_speed.measure("laptop", precision, "cpu", steps=15, warmup=3, batch=None, compile=mode != "eager")
    out["s/step"], out["compile s"] = r["step_s"], r["compile_s"]
    return out


# ------------------------------------------------------------------------------------------------ driver

def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        part, *rest = args.child
        if part == "inference":
            result = inference(rest[0])
        elif part == "training":
            result = training(rest[0], rest[1], profile=len(rest) > 2)
        else:
            result = {"graph-break": graph_break, "peak": peak, "tinyvit": tinyvit}[part]()
        print(json.dumps(result))
        return
    from run_records import commit, machine

    import torch

    results = {"machine": machine(), "commit": commit(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(f"# {results['machine']}, {results['threads']} threads", flush=True)
    for part in args.parts:
        if part == "inference":
            runs = {v: _child(["inference", v]) for v in INFERENCE_VARIANTS}
        elif part == "training":
            runs = {f"{m} {p}": _child(["training", m, p]) for m, p in TRAINING_VARIANTS}
            runs["eager bf16 profile"] = _child(["training", "eager", "bf16", "profile"])
        else:
            runs = _child([part])
        results[part] = runs
        print(f"## {part}\n{json.dumps(runs, indent=1)}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
