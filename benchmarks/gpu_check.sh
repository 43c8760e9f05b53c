#!/usr/bin/env bash
# On a CUDA machine (the lent GPU; prepare .gpu/ here first with benchmarks/gpu_prepare.sh), in under 8 min:
#   1. every experiment's golden short run on cuda, fp32 / bf16 / bf16+compile (benchmarks/gpu_check.py),
#   2. the device-independent tests (trainer.device=auto picks cuda there; the golden tests pin the CPU),
#   3. the speed benchmarks that take --device, with --device cuda.
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
echo "== 1. experiments on cuda"
timeout 300 python3 benchmarks/gpu_check.py --device cuda --jobs 4 --timeout 200 --out "$OUT/experiments.jsonl" \
  2>&1 | tee "$OUT/experiments.txt" || status=1
echo "== 2. device-independent tests on cuda"
timeout 150 python3 -m pytest -q -x -n 4 -p no:cacheprovider tests/test_training.py tests/test_cli.py \
  2>&1 | tail -25 | tee "$OUT/tests.txt" || status=1
echo "== 3. speed benchmarks, --device cuda"
timeout 40 python3 benchmarks/cnn_cifar10_throughput.py --device cuda --steps 30 2>&1 | tail -4 | tee "$OUT/bench.txt" || status=1
timeout 40 python3 benchmarks/dqn_throughput.py --device cuda --steps 500 2>&1 | tail -4 | tee -a "$OUT/bench.txt" || status=1
exit $status
