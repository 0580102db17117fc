#!/usr/bin/env bash
# CI1: cpu-polyp on CVC-ClinicDB alone, 3600 steps, seed 1, TinyViT condition (both, 128 px) + inpainted negatives:
# N1's script (the same negative sets, training and evaluations) with C1's condition added.
# From the repository root, ../shared beside it. RUNS: run folders (default runs/); RESUME=--resume continues.
set -euo pipefail
NAME=polyp-ci1-s1 EXTRA="image_encoder.condition=both image_encoder.semantic_size=128 data.augment.negative_mode=inpaint" \
  exec bash "$(dirname "$0")/../inpainted-negatives/n1.sh"
