#!/usr/bin/env bash
# Pair CI1T with the BasicUNet peer and with CI1, set by set (README.md). RUNS: where the run folders are (runs/).
set -euo pipefail
RUNS=${RUNS:-runs}
for set in cvc-val kvasir-val kvasir-all fullframe-negatives-val negatives-val; do
  echo "## $set: CI1T - BasicUNet peer"
  .venv/bin/leafseg compare "$RUNS/polyp-ci1t-s1/eval-$set" "$RUNS/polyp-basicunet-s1/eval-$set"
  echo "## $set: CI1T - CI1"
  .venv/bin/leafseg compare "$RUNS/polyp-ci1t-s1/eval-$set" "$RUNS/polyp-ci1-s1/eval-$set"
done
