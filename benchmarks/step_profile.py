"""Where the time of a real `leafseg train` step goes, on the CPU or a CUDA GPU.

`benchmarks/train_speed.py` times the networks' step alone (random tensors in place of the data and the cached
targets); this script trains for real, with `leafseg.train` on the config and data given, and times three stretches
of the same run:

  1. plain: the wall time from one step's start to the next one's, nothing added (the step a run really takes:
     data loading, targets computed per batch, the step itself, the bookkeeping around it);
  2. phases: the same steps with each phase timed, the device synchronised around every phase so that each one's
     GPU work is counted in it (this adds a little, which the table shows as the difference of the two means);
  3. optionally (--torch-profile K), K steps under torch.profiler: its operator table (self time on the CPU and,
     on CUDA, on the device) and the kernels launched a step.

    python benchmarks/step_profile.py --config cpu-polyp --steps 100 data.root=../shared/data/cvc-clinicdb ...
    python benchmarks/step_profile.py --config cpu --device cuda --torch-profile 10 data.root=...

The run's validations and checkpoints are moved past its last step (which is not counted); everything else is the
config's. Use a cache folder (``run.cache_dir=...``) to keep the frozen targets between calls.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

PHASES = (
    # (label, what it covers); "other" phases are what their parent spends outside its timed children
    ("data", "the loader's next batch: store read, flips, augmentation (in the training process or its workers)"),
    ("mask latents", "mask latents of augmented samples by the frozen mask autoencoder"),
    ("teacher", "teacher tokens of augmented views (the cached rows otherwise), to the device"),
    ("colour jitter", "kornia colour jitter of the batch's images (data.colour_jitter)"),
    ("forward", "image encoder + UNet + projector forward and the losses, under the run's autocast"),
    ("losses other", "t, noise, the batch's copies to the device"),
    ("finite check", "the loss's finiteness test (waits for the device)"),
    ("backward", "accelerator.backward"),
    ("clip", "gradient-norm clipping"),
    ("adamw", "optimizer.step"),
    ("schedule + zero_grad", "LR schedule step, zero_grad"),
    ("ema", "diffusers EMAModel.step"),
    ("bookkeeping", "progress bar, logging every train.log_every steps, budget clock"),
    ("loop other", "the rest of the loop: the step's generator, the engine's own lines"),
)


class PhaseClock:
    """Exclusive wall time per phase over the steps it is active for; nested phases are subtracted from their
    parent. ``sync`` waits for the device at each phase's start and end."""

    def __init__(self, sync):
        self.sync, self.active = sync, False
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []
        self._wrapped: list[tuple] = []

    def unwrap(self) -> None:
        """Put every wrapped attribute back (a wrapper left on the LR scheduler would end up in its state dict)."""
        for owner, attr, own, fn in reversed(self._wrapped):
            if own:
                setattr(owner, attr, fn)
            else:
                delattr(owner, attr)
        self._wrapped.clear()

    def wrap(self, owner, attr: str, label: str) -> None:
        fn = getattr(owner, attr)
        own = attr in getattr(owner, "__dict__", {})  # an instance attribute already (else: the class's method)
        self._wrapped.append((owner, attr, own, fn))

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if not self.active:
                return fn(*args, **kwargs)
            self.enter(label)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()

        setattr(owner, attr, timed)

    def enter(self, label: str) -> None:
        self.sync()
        self._stack.append([label, time.perf_counter(), 0.0])

    def leave(self) -> None:
        self.sync()
        label, start, children = self._stack.pop()
        spent = time.perf_counter() - start
        self.totals[label] += spent - children
        if self._stack:
            self._stack[-1][2] += spent


def profile(cfg, steps: int, skip: int, torch_profile: int = 0, output_dir: str | Path | None = None) -> dict:
    """Train ``cfg`` (a ``leafseg.load_config`` result) for ``skip`` + 2 x ``steps`` (+ ``torch_profile``) + 1
    steps into ``output_dir`` (default: a temporary folder, removed afterwards) and time them (module docstring)."""
    if output_dir is None:
        with tempfile.TemporaryDirectory(prefix="leafseg-step-profile-") as tmp:
            return profile(cfg, steps, skip, torch_profile, tmp)
    import torch
    from omegaconf import OmegaConf

    from leafseg import train
    from leafseg.training import engine

    total = skip + 2 * steps + torch_profile + 1  # the last step validates and checkpoints: not counted
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([
        f"run.output_dir={output_dir}", f"train.max_steps={total}", "train.time_budget_min=null",
        f"train.val_every={total}", f"train.checkpoint_every={total}", "train.val_at_start=false"]))
    on_cuda = cfg.run.device != "cpu" and torch.cuda.is_available()

    def sync():
        if on_cuda:
            torch.cuda.synchronize()

    clock = PhaseClock(sync)
    starts: list[float] = []   # each step's start (the loader's next() call)
    result: dict = {}

    original_loader = engine.train_loader

    def timed_loader(*args, **kwargs):
        batches = iter(original_loader(*args, **kwargs))

        class Batches:
            def __iter__(self):
                return self

            def __next__(self):
                starts.append(time.perf_counter())
                n = len(starts)  # steps begun
                if n == skip + steps + 1:       # stretch 2: phases
                    sync()
                    clock.active, result["phases_from"] = True, time.perf_counter()
                elif n == skip + 2 * steps + 1:  # its end
                    clock.active = False
                    clock.unwrap()
                    result["phases_s"] = time.perf_counter() - result.pop("phases_from")
                    if torch_profile:
                        result["profiler"] = _start_profiler(torch)
                elif torch_profile and n == skip + 2 * steps + torch_profile + 1:
                    sync()
                    result["profiler"].__exit__(None, None, None)
                if not clock.active:
                    return next(batches)
                clock.enter("data")
                try:
                    return next(batches)
                finally:
                    clock.leave()

        return Batches()

    class ProfiledTrainer(engine.Trainer):
        def on_train_start(self):
            super().on_train_start()
            method = self.method
            for attr, label in (("frozen_mask_latents", "mask latents"), ("_teacher_tokens", "teacher"),
                                ("_unchanged_teacher_tokens", "teacher"), ("losses", "losses other")):
                if hasattr(method, attr):
                    clock.wrap(method, attr, label)
            self.__dict__["colour_jitter"] = self.colour_jitter  # the cached property, then its timed call
            clock.wrap(self, "colour_jitter", "colour jitter")
            clock.wrap(self.model, "forward", "forward")
            clock.wrap(self.accelerator, "backward", "backward")
            clock.wrap(self.accelerator, "clip_grad_norm_", "clip")
            clock.wrap(self.optimizer, "step", "adamw")
            clock.wrap(self.lr_scheduler, "step", "schedule + zero_grad")
            clock.wrap(self.optimizer, "zero_grad", "schedule + zero_grad")
            if self.ema is not None:
                clock.wrap(self.ema, "step", "ema")

        def train_step(self, batch, generator):
            if not clock.active:
                return super().train_step(batch, generator)
            clock.enter("finite check")  # train_step's own lines: the finiteness test, mostly
            try:
                return super().train_step(batch, generator)
            finally:
                clock.leave()

    original_after_step = engine.Trainer.after_step

    def after_step(self, *args, **kwargs):
        if not clock.active:
            return original_after_step(self, *args, **kwargs)
        clock.enter("bookkeeping")
        try:
            return original_after_step(self, *args, **kwargs)
        finally:
            clock.leave()

    engine.train_loader = timed_loader
    engine.Trainer.after_step = after_step
    try:
        t0 = time.perf_counter()
        train(cfg, trainer_class=ProfiledTrainer)
        result["run_s"] = time.perf_counter() - t0
    finally:
        engine.train_loader, engine.Trainer.after_step = original_loader, original_after_step

    plain = [b - a for a, b in zip(starts[skip:skip + steps], starts[skip + 1:skip + steps + 1])]
    phases = dict(clock.totals)
    phases["loop other"] = result["phases_s"] - sum(phases.values())
    report = {"device": _device_name(torch, on_cuda), "steps": steps,
              "skip": skip, "plain_step_s": {"median": statistics.median(plain), "mean": statistics.mean(plain)},
              "phases_step_s": {k: v / steps for k, v in phases.items()}, "phased_mean_s": result["phases_s"] / steps,
              "run_s": result["run_s"], "run_dir": str(output_dir)}
    if torch_profile:
        report["torch_profile"] = _profiler_report(torch, result["profiler"], torch_profile)
    return report


def _start_profiler(torch):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    prof = profile(activities=activities)
    prof.__enter__()
    return prof


def _profiler_report(torch, prof, steps: int) -> dict:
    averages = prof.key_averages()
    table = averages.table(sort_by="self_cpu_time_total", row_limit=25)
    kernels = None
    if torch.cuda.is_available():
        device_events = [e for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA")]
        kernels = len(device_events) / steps
        for sort in ("self_device_time_total", "self_cuda_time_total"):  # the name moved between torch versions
            try:
                table += "\n" + averages.table(sort_by=sort, row_limit=15)
                break
            except (AttributeError, KeyError, ValueError):
                continue
    return {"table": table, "kernels_per_step": kernels}


def _device_name(torch, on_cuda: bool) -> str:
    if on_cuda:
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    sys.path.insert(0, str(Path(__file__).parent))
    import speed

    return speed.machine()


def print_report(r: dict) -> None:
    plain, phased = r["plain_step_s"], r["phased_mean_s"]
    print(f"device: {r['device']}")
    if "config" in r:
        print(f"config: {r['config']} {' '.join(r['overrides'])}")
    print(f"plain steps ({r['steps']} after {r['skip']}): median {plain['median'] * 1000:.1f} ms, "
          f"mean {plain['mean'] * 1000:.1f} ms; with the phases timed (device synchronised around each): "
          f"mean {phased * 1000:.1f} ms")
    print("| phase | ms / step | share | what |")
    print("|---|---|---|---|")
    what = dict(PHASES)
    for label, _ in PHASES:
        s = r["phases_step_s"].get(label)
        if s is None:
            continue
        print(f"| {label} | {s * 1000:.1f} | {s / phased:.0%} | {what[label]} |")
    if "torch_profile" in r:
        p = r["torch_profile"]
        if p["kernels_per_step"] is not None:
            print(f"CUDA kernels launched a step: {p['kernels_per_step']:.0f}")
        print(p["table"])


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cpu", help="packaged recipe or YAML file (default: cpu)")
    ap.add_argument("--steps", type=int, default=100, help="steps per timed stretch (default 100)")
    ap.add_argument("--skip", type=int, default=30, help="steps before the first stretch (warm-up; default 30)")
    ap.add_argument("--torch-profile", type=int, default=0, metavar="K",
                    help="K more steps under torch.profiler, its operator table printed")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--cache-dir", default=None, help="run.cache_dir (frozen targets kept between calls)")
    ap.add_argument("--json", default=None, help="also write the report here")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (data.root=... etc.)")
    args = ap.parse_args()
    if args.steps < 2 or args.skip < 1:
        ap.error("--steps must be at least 2 and --skip at least 1")
    from leafseg import load_config

    cfg = load_config(args.config, [*args.overrides, f"run.device={args.device}",
                                    *([f"run.cache_dir={args.cache_dir}"] if args.cache_dir else [])])
    report = {"config": args.config, "overrides": args.overrides,
              **profile(cfg, args.steps, args.skip, args.torch_profile)}
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
