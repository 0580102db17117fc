#!/usr/bin/env bash
# CI1T: CI1 given the BasicUNet peer's 34 minutes instead of 3600 steps (the budget decides the steps).
# From the repository root, ../shared beside it. RUNS: run folders (default runs/); RESUME=--resume continues.
set -euo pipefail
NAME=polyp-ci1t-s1 EXTRA="image_encoder.condition=both image_encoder.semantic_size=128 data.augment.negative_mode=inpaint
  train.max_steps=100000 train.time_budget_min=34" exec bash "$(dirname "$0")/../inpainted-negatives/n1.sh"
