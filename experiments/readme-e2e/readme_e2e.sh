#!/bin/bash
# The README's quick start, literally, on a fresh clone and a folder dataset with empty masks: 200 Kvasir-SEG frames
# (JPEG images and JPEG masks) and 40 polyp-free crops of the val splits (PNG, empty masks) as my-data/, 5 other
# Kvasir-SEG frames as new-images/, and the app (step 6) in chromium. Needs ../shared (or $LEAFSEG_SHARED) and
# /usr/bin/chromium; about 15 min of training on 2 cores.
#   bash experiments/readme-e2e/readme_e2e.sh [WORK_FOLDER]        # default /tmp/leafseg-readme-check
set -ex
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export LEAFSEG_SHARED=${LEAFSEG_SHARED:-$REPO/../shared}  # the clone lives elsewhere: its scripts find the data here
SHARED=$LEAFSEG_SHARED
WORK=${1:-/tmp/leafseg-readme-check}
KVASIR=$SHARED/data/kvasir-seg
T0=$(date +%s)
at() { echo "README check at $(( $(date +%s) - T0 )) s: $*"; }
rm -rf "$WORK" && mkdir -p "$WORK" && git clone -q "$REPO" "$WORK/leafseg" && cd "$WORK/leafseg"
make install
at "installed"
source .venv/bin/activate
python benchmarks/negative_set.py --split val --out "$WORK/negatives"
mkdir -p my-data/images my-data/masks new-images new-masks
for f in $(ls "$KVASIR/images" | sort | head -200); do
  cp "$KVASIR/images/$f" my-data/images/; cp "$KVASIR/masks/$f" my-data/masks/; done
for f in $(ls "$WORK/negatives/images" | sort | head -40); do
  cp "$WORK/negatives/images/$f" my-data/images/; cp "$WORK/negatives/masks/$f" my-data/masks/; done
for f in $(ls "$KVASIR/images" | sort | tail -5); do
  cp "$KVASIR/images/$f" new-images/; cp "$KVASIR/masks/$f" new-masks/; done
cat > my-config.yaml <<YAML
base: cpu                    # TAEF2 + LiteMedSAM at 128 px, as many steps as fit in 57 min (at most 8500)
data:
  root: my-data
autoencoder:
  path: $SHARED/weights/taef2       # folder with taef2_encoder.pth and taef2_decoder.pth
run:
  output_dir: runs/my-run
YAML
at "data ready"
leafseg train --config my-config.yaml train.time_budget_min=15 # key=value overrides any config key
at "trained"
leafseg evaluate --model runs/my-run/model-best --data my-data --split test
at "evaluated"
leafseg predict --model runs/my-run/model-best --input new-images/ --output predictions/ --ensemble 5 --uncertainty
at "first masks of new images written"
python - <<'PY'
import glob

from PIL import Image

import leafseg

image = Image.open(sorted(glob.glob("new-images/*"))[0])
pipe = leafseg.load_pipeline("runs/my-run/model-best")
out = pipe(image)                      # PIL image or HxWx3 array, or a list; out.masks[0] is its bool mask
assert out.masks[0].shape == image.size[::-1] and out.masks[0].dtype == bool
print("python API: mask", out.masks[0].shape, out.masks[0].dtype)
PY
leafseg score --pred predictions/ --gt new-masks --images new-images
# step 6, the app: the README's install line, then the page driven in chromium (needs /usr/bin/chromium)
pip install -q -e '.[app]'
python docs/app_screenshot.py --model runs/my-run/model-best --image "new-images/$(ls new-images | head -1)" \
  --out "$WORK/app.png"
at "app screenshot $WORK/app.png"
echo "README end-to-end: rc 0 in $(( $(date +%s) - T0 )) s"
