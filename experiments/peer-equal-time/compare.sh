#!/usr/bin/env bash
# Pair LEAF (X2S1r) and the BasicUNet peer set by set (see README.md). RUNS: where the run folders are (runs/).
set -euo pipefail
RUNS=${RUNS:-runs}
for set in cvc-val kvasir-val kvasir-all fullframe-negatives-val negatives-val; do
  echo "## $set"
  .venv/bin/leafseg compare "$RUNS/polyp-x2-s1r/eval-$set" "$RUNS/polyp-basicunet-s1/eval-$set"
done
