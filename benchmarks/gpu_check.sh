#!/usr/bin/env bash
# On a CUDA machine (the lent GPU, 16 cores; prepare .gpu/ here first with benchmarks/gpu_prepare.sh), in under 8 min:
#   1. every experiment's golden short run on cuda, fp32 / bf16 / bf16+compile (benchmarks/gpu_check.py),
#   2. the device-independent tests (trainer.device=auto picks cuda there; the golden tests pin the CPU),
#   3. the speed benchmarks that take --device, with --device cuda,
#   4. an LSTM run's checkpoints read back on cuda (cuDNN keeps its weights in one flat buffer): fdl eval.
# Usage: bash benchmarks/gpu_check.sh [EXPERIMENT...] (part 1 for these only); GPU_CHECK_PARTS="1 4" picks parts.
# Prints one table per part; the logs also land in $OUT when it is set (the device tool fetches them).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu-check}"; mkdir -p "$OUT"
if [ -d .gpu/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH="$PWD:/tmp/site"
fi
export FDL_DATA_DIR="${FDL_DATA_DIR:-$PWD/.gpu/data}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export FDL_CACHE_DIR=/tmp/fdl-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
status=0
parts="${GPU_CHECK_PARTS:-1 2 3 4}"
if [[ " $parts " == *" 1 "* ]]; then
echo "== 1. experiments on cuda"
timeout 260 python3 benchmarks/gpu_check.py --device cuda --jobs 12 --timeout 200 --out "$OUT/experiments.jsonl" "$@" \
  2>&1 | tee "$OUT/experiments.txt" || status=1
fi
if [[ " $parts " == *" 4 "* ]]; then
echo "== 4. an LSTM run's checkpoints read back on cuda"
runs=$(mktemp -d)
overrides=$(python3 benchmarks/gpu_check.py --print-overrides sentiment-lstm)
# shellcheck disable=SC2086
FDL_RUNS_DIR="$runs" timeout 120 python3 -m fdlcli train sentiment-lstm $overrides trainer.device=cuda >/dev/null 2>&1 \
  && FDL_RUNS_DIR="$runs" timeout 60 python3 -m fdlcli eval "$(ls -d "$runs"/sentiment-lstm/*/)" 2>&1 | tail -3 \
  | tee "$OUT/eval.txt" || { echo "FAILED: train or eval of sentiment-lstm on cuda"; status=1; }
fi
if [[ " $parts " == *" 2 "* ]]; then
echo "== 2. device-independent tests on cuda"
timeout 120 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_training.py tests/test_cli.py \
  2>&1 | tail -25 | tee "$OUT/tests.txt" || status=1
fi
if [[ " $parts " == *" 3 "* ]]; then
echo "== 3. speed benchmarks, --device cuda"
timeout 40 python3 benchmarks/cnn_cifar10_throughput.py --device cuda --steps 30 2>&1 | tail -6 | tee "$OUT/bench.txt" || status=1
timeout 40 python3 benchmarks/dqn_throughput.py --device cuda --steps 500 2>&1 | tail -4 | tee -a "$OUT/bench.txt" || status=1
fi
exit $status
