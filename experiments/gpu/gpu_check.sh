# leafseg on a GPU: the recipe's real step against benchmarks/train_speed.py's, phase by phase, then the tests
# that train. Run from the repository root; the bundle folder (this file's, made by
# experiments/gpu/gpu_bundle.py) holds wheels, data and weights.
export PYTHONUNBUFFERED=1
B=$(cd "$(dirname "$0")" && pwd); OUT=${OUT:-$B/out}; mkdir -p $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $B/whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site LEAFSEG_SHARED=$B/shared
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/gpu.txt
DATA="data.root=$B/shared/data/cvc-clinicdb data.layout=cvc-clinicdb data.split_file=$B/splits/cvc-clinicdb.json autoencoder.path=$B/shared/weights/taef2 align.teacher_checkpoint=$B/lite_medsam_image_encoder.pth"
KV="data.sources=[{root: $B/shared/data/kvasir-seg, layout: kvasir-seg, name: kvasir, split_file: $B/splits/kvasir-seg.json}]"
timeout 120 python3 benchmarks/train_speed.py --arch laptop --device cuda > $OUT/train_speed.txt 2>&1; cat $OUT/train_speed.txt
for run in "cpu fp32 train.mixed_precision=no" "cpu bf16 train.mixed_precision=auto" "cpu-polyp bf16 train.mixed_precision=auto"; do
  set -- $run
  if [ $1 = cpu-polyp ]; then X="$KV"; else X="run.seed=0"; fi
  timeout 150 python3 benchmarks/step_profile.py --config $1 --device cuda --steps 150 --skip 40 --torch-profile 10 \
    --cache-dir /tmp/cache $DATA "$X" $3 > $OUT/profile-$1-$2.txt 2>&1
  echo "== $1 $2 rc $?"; grep -A24 "^device:" $OUT/profile-$1-$2.txt
done
timeout 170 python3 -m pytest -q -ra -n 14 -p no:cacheprovider tests/test_expected_slices.py tests/test_distributed.py \
  tests/test_budget.py tests/test_training.py tests/test_streaming.py tests/test_pipeline.py tests/test_augment.py \
  tests/test_dropout.py tests/test_step_profile.py \
  --deselect tests/test_streaming.py::test_training_memory_does_not_grow_with_the_number_of_slices > $OUT/pytest.txt 2>&1
echo "pytest rc $?"; tail -30 $OUT/pytest.txt
