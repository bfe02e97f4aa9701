#!/usr/bin/env bash
# The one-shot GPU check of docs/real-size.md: the CUDA-only tests, then `nexusgen bench gpu` (real size).
# Run on a lent GPU machine from the repository root, with the wheels of docs/real-size.md in .whl/.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 | tee "$OUT/gpu_tests.txt" || true  # bench anyway
timeout 330 python3 -m nexusgen bench gpu > "$OUT/bench_gpu.json"
python3 -c "import json; r = json.load(open('$OUT/bench_gpu.json')); print(json.dumps({k: r[k] for k in ('device', 'total_seconds')}))"
