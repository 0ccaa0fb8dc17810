#!/usr/bin/env bash
# The GPU check: on a bare Linux GPU machine (Python 3.12 and torch preinstalled, no network), install
# the project's other packages from a local wheel folder, run the DRIVE pipeline for all three models
# with the GPU recipe (recipes/drive-gpu.yaml), then the benchmarks, and write one JSON:
# reports/benchmarks/gpu.json (GPU, torch/CUDA versions, per-model train seconds, images/s, peak GPU
# memory, FOV F1/AUC, inference ms/image fp32 vs AMP, data-loader stall share).
#
# Prepare on a connected machine (scripts/prepare_gpu_carry.sh: the wheels and DRIVE as PNG, ~60 MiB):
#   bash scripts/prepare_gpu_carry.sh /path/to/DRIVE
# On the GPU machine, in the repository root:
#   bash scripts/gpu_check.sh                      # --wheels .whl --drive .gpu-data/DRIVE
# A CPU smoke run of the same steps (tiny settings; what tests/tooling/test_gpu_check.py runs):
#   bash scripts/gpu_check.sh --smoke --wheels none --drive ../shared/datasets/DRIVE
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=.whl
DRIVE=.gpu-data/DRIVE
RESULT=reports/benchmarks/gpu.json
SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=$2; shift 2 ;;
    --drive) DRIVE=$2; shift 2 ;;
    --out) RESULT=$2; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
export GX_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
phase() { echo; echo "== [$(elapsed) s] $*"; }

if [ "$WHEELS" != none ]; then
  phase "installing the wheels in $WHEELS (no index, no network)"
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "error: no wheels in $WHEELS (build them: bash scripts/prepare_gpu_carry.sh)" >&2; exit 1; }
  site=${GPU_CHECK_SITE:-/tmp/retinaseg-site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
# the stages call `python`: make it this interpreter
shim=$(mktemp -d); printf '#!/bin/sh\nexec "%s" "$@"\n' "$(command -v "$PY")" > "$shim/python"
chmod +x "$shim/python"; export PATH="$shim:$PATH"
python -c "import retinaseg, dvc, mlflow, segmentation_models_pytorch, albumentations" \
  || { echo "error: the project's packages do not import (see above); the wheel folder is incomplete" >&2; exit 1; }

test -d "$DRIVE/training" -a -d "$DRIVE/test" \
  || { echo "error: $DRIVE is not a DRIVE folder (training/, test/); pass --drive DIR" >&2; exit 1; }

if [ "$SMOKE" = 0 ]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "error: no CUDA device visible to torch: this script measures a GPU (--smoke runs it on the CPU at tiny settings)" >&2; exit 1; }
fi

phase "params: recipes/drive-gpu.yaml, data.root=$DRIVE$([ "$SMOKE" = 1 ] && echo ', smoke settings')"
sets=(--set "data.root=$(realpath "$DRIVE")")
if [ "$SMOKE" = 1 ]; then
  # the same steps at a size a 2-core CPU runs in a few minutes
  sets+=(--set preprocess.size=128 --set augment.crop_size=64 --set train.batch_size=4
         --set train.samples_per_epoch=8 --set train.epochs=1 --set train.warmup_epochs=0
         --set models.unet.base_channels=8 --set models.unet.depth=3
         --set models.attention_unet.base_channels=8 --set models.attention_unet.depth=3
         --set evaluate.bootstrap=0 --set evaluate.n_overlays=0 --set base.threads=1)
fi
python scripts/recipe.py apply recipes/drive-gpu.yaml "${sets[@]}"

# a fresh MLflow store for this run; the pipeline runs with DVC, without git when there is none
export MLFLOW_TRACKING_URI="sqlite:///$PWD/.gpu-run/mlflow.db"
rm -rf .gpu-run && mkdir -p .gpu-run
[ -d .git ] || dvc config --local core.no_scm true

phase "dvc repro (the whole pipeline, all three models)"
dvc repro --force 2>&1 | tee .gpu-run/pipeline.log
pipeline_seconds=$(elapsed)

phase "benchmarks"
bench_args=(--devices cuda)
[ "$SMOKE" = 1 ] && bench_args=(--quick --devices cpu)
# a failed benchmark is reported (gpu.json notes it) and the run goes on to the report
python benchmarks/inference_latency.py "${bench_args[@]}" --out .gpu-run/inference.json 2>&1 | tail -25 \
  || echo "warning: benchmarks/inference_latency.py failed (above)"
# peak GPU memory and images/s of a training step at the recipe's sizes, per model (fp32 and AMP,
# channels-last off/on; no torch.compile variants: they take minutes to compile)
read -r crop batch < <(python -c "from retinaseg.core.config import load_params as l
p = l(); print(p.augment.crop_size, p.train.batch_size)")
step_args=(--size "$crop" --cuda-batch "$batch" --devices cuda --steps 10 --no-compile)
[ "$SMOKE" = 1 ] && step_args=(--quick)
python benchmarks/train_throughput.py "${step_args[@]}" --out .gpu-run/train_throughput.json 2>&1 | tail -25 \
  || echo "warning: benchmarks/train_throughput.py failed (above)"
# the loader against the bare step at the recipe's sizes (crop, batch, samples, U-Net width and depth)
read -r crop batch samples width depth < <(python -c "from retinaseg.core.config import load_params as l
p = l(); print(p.augment.crop_size, p.train.batch_size, p.train.samples_per_epoch,
p.models.unet.base_channels, p.models.unet.depth)")
loader_args=(--crop "$crop" --batch "$batch" --samples "$samples" --base-channels "$width" --depth "$depth")
[ "$SMOKE" = 1 ] && loader_args=(--quick) || loader_args+=(--workers 0,2,4,8)
python benchmarks/data_loader.py "${loader_args[@]}" --processed data/processed/train \
  --out .gpu-run/data_loader.json 2>&1 | tail -25 || echo "warning: benchmarks/data_loader.py failed (above)"

phase "report"
python scripts/gpu_report.py --run-dir .gpu-run --pipeline-seconds "$pipeline_seconds" \
  --total-seconds "$(elapsed)" $([ "$SMOKE" = 1 ] && echo --smoke) --out "$RESULT"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$RESULT" .gpu-run/pipeline.log .gpu-run/inference.json .gpu-run/data_loader.json \
    .gpu-run/train_throughput.json "$OUT"/ 2>/dev/null || true
fi
echo ">> done in $(elapsed) s: $RESULT"
