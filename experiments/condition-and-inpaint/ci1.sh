#!/usr/bin/env bash
# CI1: cpu-polyp on CVC-ClinicDB alone, 3600 steps, seed 1, TinyViT condition (both, 128 px) + inpainted negatives.
# From the repository root, ../shared beside it. RUNS: run folders (default runs/); RESUME=--resume continues.
set -euo pipefail
RUNS=${RUNS:-runs}
R=$RUNS/polyp-ci1-s1
L=.venv/bin/leafseg
[ -d "$RUNS/polyp-negatives-val" ] || .venv/bin/python benchmarks/negative_set.py --split val --out "$RUNS/polyp-negatives-val"
[ -d "$RUNS/polyp-fullframe-negatives-val" ] || .venv/bin/python benchmarks/negative_set.py --split val --mode inpaint \
  --out "$RUNS/polyp-fullframe-negatives-val"
$L train --config cpu-polyp --output $R data.root=../shared/data/cvc-clinicdb data.layout=cvc-clinicdb \
  data.split_file=benchmarks/splits/cvc-clinicdb.json autoencoder.path=../shared/weights/taef2 train.max_steps=3600 \
  train.time_budget_min=null run.seed=1 image_encoder.condition=both image_encoder.semantic_size=128 \
  data.augment.negative_mode=inpaint ${RESUME:-}
ev() { $L evaluate --model $R/model-best --batch-size 4 --no-frame-decision "$@"; }
ev --data $RUNS/polyp-fullframe-negatives-val --split all --output $R/eval-fullframe-negatives-val
ev --data ../shared/data/kvasir-seg --layout kvasir-seg --split val --split-file benchmarks/splits/kvasir-seg.json \
  --output $R/eval-kvasir-val
ev --data ../shared/data/cvc-clinicdb --layout cvc-clinicdb --split val --split-file benchmarks/splits/cvc-clinicdb.json \
  --output $R/eval-cvc-val
ev --data $RUNS/polyp-negatives-val --split all --output $R/eval-negatives-val
ev --data ../shared/data/kvasir-seg --layout kvasir-seg --split all --output $R/eval-kvasir-all
echo DONE
