#!/usr/bin/env bash
# C1: cpu-polyp on CVC-ClinicDB alone, 3600 steps, seed 1, + the TinyViT condition (both, SIZE px); paired with X2S1.
# From the repository root, with ../shared beside it: SIZE=128 bash experiments/semantic-condition/c1.sh
# (RUNS: where run folders go, default runs/; RESUME=--resume continues an interrupted run.)
set -euo pipefail
S=${SIZE:-128}
RUNS=${RUNS:-runs}
R=$RUNS/polyp-c1-s1
L=.venv/bin/leafseg
[ -d "$RUNS/polyp-negatives-val" ] || .venv/bin/python benchmarks/negative_set.py --split val --out "$RUNS/polyp-negatives-val"
$L train --config cpu-polyp --output $R data.root=../shared/data/cvc-clinicdb data.layout=cvc-clinicdb \
  data.split_file=benchmarks/splits/cvc-clinicdb.json autoencoder.path=../shared/weights/taef2 train.max_steps=3600 \
  train.time_budget_min=null run.seed=1 image_encoder.condition=both image_encoder.semantic_size=$S ${RESUME:-}
$L evaluate --model $R/model-best --batch-size 4 --data ../shared/data/kvasir-seg --layout kvasir-seg \
    --split val --split-file benchmarks/splits/kvasir-seg.json --output $R/eval-kvasir-val
$L evaluate --model $R/model-best --batch-size 4 --data ../shared/data/cvc-clinicdb \
    --layout cvc-clinicdb --split val --split-file benchmarks/splits/cvc-clinicdb.json --output $R/eval-cvc-val
$L evaluate --model $R/model-best --batch-size 4 --data $RUNS/polyp-negatives-val --split all \
    --output $R/eval-negatives-val
$L evaluate --model $R/model-best --batch-size 4 --data ../shared/data/kvasir-seg --layout kvasir-seg \
    --split all --output $R/eval-kvasir-all
