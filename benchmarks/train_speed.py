"""Training-step speed of leafseg on one device (CPU or CUDA GPU), per architecture and precision, with the time the
config's whole training would take at that rate, peak memory, and single-step inference throughput.

Two architectures, random weights (speed does not depend on them):
  * paper: the LEAF paper's networks -- LDM LSUN-Churches UNet (295 M parameters, dropout 0.2, 8 -> 4 channels;
    shapes from $LEAFSEG_SHARED/reference/ldm_full_size_keys.json), kl-f8 autoencoder (its encoder copy trained as
    image encoder, dropout 0.2), 256 x 256, projector 2048 to a 768-d teacher (DINOv2 ViT-B/14) on the 16 x 16
    grid, batch 4, paper.yaml's optimiser, clip and EMA;
  * laptop: the `cpu` recipe -- TAEF2 (weights from $LEAFSEG_SHARED/weights/taef2), its UNet, 128 x 128, projector
    512 to LiteMedSAM's 256-d neck on the 8 x 8 grid, batch 4, cpu.yaml's optimiser, clip and EMA.

One step is what `leafseg train` does per step once its caches exist: image encoder + UNet (+ projector) forward
under the run's autocast, L1/L2 + alignment loss, then the engine's own `optimisation_step` (backward, grad clip,
AdamW, LR schedule, EMA of the UNet). The mask latents and teacher tokens come from the cache in a real run, so here
they are random tensors of their shapes (the teacher and the mask encoder are not in the step). Data loading is not
timed (rows read from the sample store on disk: experiments/data-scale/data_scale.py measures it with the whole
command).

    python benchmarks/train_speed.py                          # both architectures, fp32 and (where supported) bf16
    python benchmarks/train_speed.py --arch laptop --steps 20 --device cpu
    python benchmarks/train_speed.py --arch laptop --set image_encoder.frozen_layers=6   # time a recipe choice

Timings: median step time over --steps after --warmup steps (CUDA synchronised around each step); each
(architecture, precision) runs in its own process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LEAFSEG_SHARED", REPO.parent / "shared"))
TEACHER_DIM = {"paper": 768, "laptop": 256}  # DINOv2 ViT-B/14 tokens; LiteMedSAM neck channels


def build(arch: str, overrides: list[str] = ()):
    """(config, image encoder, UNet, scheduler, autoencoder) of the architecture with seeded random weights;
    ``overrides`` are config dotlist entries (e.g. ``image_encoder.frozen_layers=6``) on top of its config."""
    import torch

    from leafseg.config import load_config, to_container
    from leafseg.conversion import kl_vae_config_from_state_dict, ldm_unet_config_from_state_dict
    from leafseg.diffusion import make_scheduler
    from leafseg.models import autoencoder as ae_ops
    from leafseg.models.denoiser import set_unet_dropout, widen_input_conv
    from leafseg.models.image_encoder import ImageEncoder
    from leafseg.models.ldm_unet import unet_from_config
    from leafseg.training.leaf import build_components

    torch.manual_seed(0)
    if arch == "paper":
        # paper.yaml's pretrained paths are never read here: the networks are built from the key listing
        os.environ.setdefault("LEAFSEG_PRETRAINED", "/nonexistent")
        cfg = load_config("paper", ["data.root=unused", *overrides])
        keys = json.loads((SHARED / "reference" / "ldm_full_size_keys.json").read_text())
        ae = ae_ops.load_autoencoder("kl", config=kl_vae_config_from_state_dict(keys["kl_f8_vae"]["keys"]),
                                     scaling_factor=float(cfg.autoencoder.scaling_factor))
        unet = widen_input_conv(unet_from_config(ldm_unet_config_from_state_dict(
            keys["ldm_lsun_churches_unet"]["keys"])))
        unet = set_unet_dropout(unet, float(cfg.unet.dropout))
        encoder = ImageEncoder.from_autoencoder(ae, dropout=float(cfg.image_encoder.dropout))
        scheduler = make_scheduler(**to_container(cfg.diffusion))
        return cfg, encoder, unet, scheduler, ae
    cfg = load_config("cpu", ["data.root=unused", f"autoencoder.path={SHARED / 'weights' / 'taef2'}", *overrides])
    c = build_components(cfg)
    return cfg, c["image_encoder"], c["unet"], c["scheduler"], c["autoencoder"]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(arch: str, precision: str, device_name: str, steps: int, warmup: int, batch: int | None,
            overrides: list[str] = (), compile: bool = False) -> dict:
    import torch
    from accelerate import Accelerator

    from leafseg.models import autoencoder as ae_ops
    from leafseg.models.alignment import Projector
    from leafseg.models.denoiser import down_block_grids
    from leafseg.training.optimisation import make_ema, make_lr_scheduler, optimisation_step
    from leafseg.training.run_setup import fresh_accelerator_state
    from leafseg.training.leaf import LeafTrainingModel

    cfg, encoder, unet, scheduler, ae = build(arch, overrides)
    fresh_accelerator_state()
    accelerator = Accelerator(mixed_precision=precision, cpu=device_name == "cpu")
    device = accelerator.device
    tc, ac = cfg.train, cfg.align
    bs = int(batch or tc.batch_size)
    r = int(cfg.data.resolution)
    layer = int(ac.layer)
    grid = down_block_grids(unet, int(unet.config.sample_size))[layer]
    projector = Projector(unet.down_blocks[layer].resnets[-1].out_channels, TEACHER_DIM[arch], int(ac.projector_dim))
    scale = ae_ops.latent_scale(ae)
    channels, latent = ae_ops.latent_channels(ae), int(unet.config.sample_size)
    model = LeafTrainingModel(encoder, unet, projector, scheduler, cfg, scale)
    if compile:
        from leafseg.pipelines.compilation import compile_for_training

        compile_for_training(encoder, unet)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, betas=tuple(tc.adam_betas))
    lr_scheduler = make_lr_scheduler(optimizer, tc)
    model, optimizer = accelerator.prepare(model, optimizer)
    ema = make_ema(accelerator.unwrap_model(model).unet, tc.ema, device)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(bs, 3, r, r, generator=g) * 2 - 1
    z0 = torch.randn(bs, channels, latent, latent, generator=g)
    tokens = torch.randn(bs, grid * grid, TEACHER_DIM[arch], generator=g)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.train()

    def step() -> float:
        t = torch.randint(0, scheduler.config.num_train_timesteps, (bs,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        _sync(device)
        start = time.perf_counter()
        with accelerator.autocast():
            losses = model(images.to(device), z0.to(device), noise.to(device), t.to(device), tokens.to(device))
        optimisation_step(accelerator, losses["loss"], params, optimizer, lr_scheduler, tc.grad_clip, ema,
                          accelerator.unwrap_model(model).unet)
        _sync(device)
        if not torch.isfinite(losses["loss"].detach()):
            raise FloatingPointError(f"{arch} {precision}: non-finite loss")
        return time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(warmup):  # compiled: the first step compiles forward and backward
        step()
    warmup_s = time.perf_counter() - start
    times = [step() for _ in range(steps)]
    result = {"arch": arch, "precision": precision, "device": str(device), "batch": bs, "resolution": r,
              "step_s": statistics.median(times), "max_steps": int(tc.max_steps), "compiled": compile,
              "compile_s": warmup_s - warmup * statistics.median(times) if compile else None,
              "unet_mparams": sum(p.numel() for p in unet.parameters()) / 1e6}
    result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    result["infer_img_per_s"] = _inference_rate(accelerator.unwrap_model(model), ae, scheduler, device, r)
    return result


def _inference_rate(model, ae, scheduler, device, r: int, batch: int = 16) -> float:
    """Images/s of the exported pipeline's single-step prediction (fp32, as `leafseg predict` runs), at the
    processing resolution, batch ``batch``, excluding image decoding and resizing to the original size."""
    import torch

    from leafseg.pipelines.leaf import LeafSegPipeline

    pipe = LeafSegPipeline(ae.to(device), model.image_encoder, model.unet, scheduler)
    pipe.set_progress_bar_config(disable=True)
    x = torch.rand(batch, 3, r, r, device=device) * 2 - 1
    model.eval()
    with torch.inference_mode():
        def run():
            pipe.latents_to_soft_masks(pipe.predict_latents(x)[0])
            _sync(device)
        run()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    model.train()
    return batch / statistics.median(times)


def _measure_in_child(arch: str, precision: str, args, compile: bool = False) -> dict:
    """One (architecture, precision, eager or compiled) in its own process, so that peak memory and the allocator's
    cache are its own."""
    cmd = [sys.executable, __file__, "--one", arch, precision, "--device", args.device, "--steps", str(args.steps),
           "--warmup", str(args.warmup), *(["--batch", str(args.batch)] if args.batch else []),
           *(["--set", *args.set] if args.set else []), *(["--compiled"] if compile else [])]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def machine(device_name: str) -> str:
    import torch

    if device_name.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    # the CPU description speed.py prints, so the two benchmarks' tables name a machine the same way
    spec = importlib.util.spec_from_file_location("speed", Path(__file__).with_name("speed.py"))
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    return speed.machine()


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="*", default=["paper", "laptop"], choices=["paper", "laptop"])
    ap.add_argument("--precision", nargs="*", default=None, choices=["no", "bf16"],
                    help="default: fp32 ('no') and, where the device has bf16 units (the rule of "
                    "train.mixed_precision: auto), bf16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=30, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=None, help="default: the config's train.batch_size")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides, e.g. image_encoder.frozen_layers=6 (the paper "
                    "architecture's network shapes come from its key listing, not from the config)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--compile", action="store_true",
                    help="also time each row with train.compile (the networks compiled by torch.compile), the "
                    "compile time apart")
    ap.add_argument("--one", nargs=2, metavar=("ARCH", "PRECISION"), help=argparse.SUPPRESS)  # child process
    ap.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.device, args.steps, args.warmup, args.batch, args.set,
                                 args.compiled)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    from leafseg.pipelines.precision import bf16_is_fast

    precisions = args.precision or (["no", "bf16"] if bf16_is_fast(args.device) else ["no"])
    print(f"device: {machine(args.device)}" + (f"; overrides: {' '.join(args.set)}" if args.set else ""))
    print("| arch | precision | kernels | batch | s/step | images/s | steps of the config | time for them | "
          "peak GPU GiB | inference images/s (fp32, b16) | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for arch in args.arch:
        for precision in precisions:
            for compiled in ([False, True] if args.compile else [False]):
                r = _measure_in_child(arch, precision, args, compiled)
                rows.append(r)
                hours = r["step_s"] * r["max_steps"] / 3600
                peak = "-" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.1f}"
                compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.0f}"
                print(f"| {arch} ({r['unet_mparams']:.0f} M UNet, {r['resolution']} px) | "
                      f"{'fp32' if precision == 'no' else precision} | {'compiled' if compiled else 'eager'} | "
                      f"{r['batch']} | {r['step_s']:.3f} | {r['batch'] / r['step_s']:.1f} | {r['max_steps']} | "
                      f"{hours:.2f} h | {peak} | {r['infer_img_per_s']:.1f} | {compile_s} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
