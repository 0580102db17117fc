# As run on an H100 machine (2026-11-27), from the repository root: .gpu/whl held the carried wheels (no registry
# there), and an earlier call had parked CVC-ClinicDB and TAEF2 in /tmp/shared (one call carries at most 64 MiB).
# call B: leafseg's test suite with CUDA visible (real data included), then the cpu recipe trained on CUDA on
# CVC-ClinicDB with a 3-minute time budget, evaluated once on test.
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site
S=/tmp/shared; [ -d $S/data/cvc-clinicdb ] || S=$PWD/.gpu/shared
[ -d $S/data/cvc-clinicdb ] || { echo "no staged data"; exit 3; }
export LEAFSEG_SHARED=$S
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/gpu.txt
python3 -c "import torch,diffusers,accelerate,transformers,onnxruntime,torchmetrics;print('torch',torch.__version__,torch.cuda.is_available(),'diffusers',diffusers.__version__,'accelerate',accelerate.__version__,'transformers',transformers.__version__,'ort',onnxruntime.__version__,'torchmetrics',torchmetrics.__version__)" | tee $OUT/versions.txt
t0=$(date +%s)
timeout 250 python3 -m pytest -q -ra -n 12 -p no:cacheprovider tests > $OUT/pytest-cuda.txt 2>&1; echo "pytest rc $? in $(( $(date +%s) - t0 )) s" | tee -a $OUT/pytest-cuda.txt
tail -40 $OUT/pytest-cuda.txt
t0=$(date +%s)
timeout 240 python3 -m leafseg.cli train --config cpu --output /tmp/run data.root=$S/data/cvc-clinicdb data.layout=cvc-clinicdb data.split_file=benchmarks/splits/cvc-clinicdb.json autoencoder.path=$S/weights/taef2 train.time_budget_min=3 2>&1 | tr '\r' '\n' | grep -v 'it/s\]$' > $OUT/train-cuda.txt; echo "train rc ${PIPESTATUS[0]} in $(( $(date +%s) - t0 )) s" | tee -a $OUT/train-cuda.txt
grep -iE "budget|best|val|cuda|device|step 0|wall" $OUT/train-cuda.txt | tail -30
cp /tmp/run/logs/timings.json $OUT/timings-cuda.json 2>/dev/null; find /tmp/run -name trainer_state.json | head -1 | xargs -r -I{} cp {} $OUT/
t0=$(date +%s)
timeout 60 python3 -m leafseg.cli evaluate --model /tmp/run/model-best --data $S/data/cvc-clinicdb --layout cvc-clinicdb --split test --split-file benchmarks/splits/cvc-clinicdb.json --output /tmp/eval > $OUT/eval-cuda.txt 2>&1; echo "eval rc $? in $(( $(date +%s) - t0 )) s" | tee -a $OUT/eval-cuda.txt
tail -25 $OUT/eval-cuda.txt; cp /tmp/eval/summary.json $OUT/eval-summary.json 2>/dev/null
