#!/usr/bin/env bash
# LEAF (`cpu` recipe) and MONAI BasicUNet on cxr-structures, split by patient, the same time budget each, then
# both evaluated on val and test. From the repository root, with ../shared beside it:
#   BUDGET=25 bash experiments/multi-class/cxr.sh
# (RUNS: where run folders go, default runs/; RESUME=--resume continues an interrupted run.)
set -euo pipefail
RUNS=${RUNS:-runs}
B=${BUDGET:-25}
L=.venv/bin/leafseg
D=../shared/data/cxr-structures
COMMON="data.root=$D data.split_file=benchmarks/splits/cxr-structures.json data.hflip=false train.time_budget_min=$B"
$L train --config cpu --output $RUNS/cxr-leaf $COMMON autoencoder.path=../shared/weights/taef2 ${RESUME:-}
$L train --config cpu --output $RUNS/cxr-basicunet $COMMON method=basicunet ${RESUME:-}
for arm in leaf basicunet; do
  for split in val test; do
    $L evaluate --model $RUNS/cxr-$arm/model-best --data $D --split $split --output $RUNS/cxr-$arm/eval-$split
  done
done
$L compare $RUNS/cxr-leaf/eval-test $RUNS/cxr-basicunet/eval-test
for name in "right lung" "left lung" cardiomediastinum airways; do
  $L compare $RUNS/cxr-leaf/eval-test $RUNS/cxr-basicunet/eval-test --metric "dice_$name"
done
