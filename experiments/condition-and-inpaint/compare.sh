#!/usr/bin/env bash
# Pair CI1 with C1 and N1 (and X2S1r, the recipe) set by set, then the frame decision out of sample (README.md).
# RUNS: where the run folders are (runs/).
set -euo pipefail
RUNS=${RUNS:-runs}
for other in polyp-c1-s1 polyp-n1-s1 polyp-x2-s1r; do
  for set in cvc-val kvasir-val kvasir-all fullframe-negatives-val negatives-val; do
    echo "## CI1 - ${other#polyp-} on $set"
    .venv/bin/leafseg compare "$RUNS/polyp-ci1-s1/eval-$set" "$RUNS/$other/eval-$set"
  done
done
RUNS=$RUNS .venv/bin/python experiments/frame-decision/frame_decision.py
