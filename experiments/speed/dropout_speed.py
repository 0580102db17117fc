"""Time one dropout mask applied by torch (``F.dropout``) and by leafseg's ``words16`` sampler, on the feature-map
shapes of the `cpu` recipe's image encoder (batch 4, 64 channels, 128 / 64 / 32 px), fp32 and bf16.

    python experiments/speed/dropout_speed.py            # 2 threads, median of 20 after 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from leafseg.models.dropout import dropout_words16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--p", type=float, default=0.2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import speed

    print(f"device: {speed.machine()}; dropout p={args.p}")
    print("| shape | dtype | F.dropout ms | words16 ms | speed-up |")
    print("|---|---|---|---|---|")
    for side in (128, 64, 32):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(4, 64, side, side).to(dtype)
            a = speed.median_time(lambda x=x: F.dropout(x, args.p, True), args.repeats, 3) * 1000
            b = speed.median_time(lambda x=x: dropout_words16(x, args.p), args.repeats, 3) * 1000
            print(f"| 4 x 64 x {side} x {side} | {str(dtype).removeprefix('torch.')} | {a:.2f} | {b:.2f} | "
                  f"{a / b:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
