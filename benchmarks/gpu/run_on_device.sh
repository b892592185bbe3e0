#!/usr/bin/env bash
# Runs ON the device machine (the `device` tool: run with carry [".gpu"] and timeout_s ~540):
#   bash benchmarks/gpu/run_on_device.sh            # results in $OUT/gpu_checks.{json,md}
# Installs the carried wheels, then runs every GPU check and benchmark in one process (~5 min on an H200).
set -uo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
mkdir -p "${OUT:-gpu-out}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 benchmarks/gpu/gpu_checks.py --device cuda --out "${OUT:-gpu-out}" "$@" 2>&1 | tee "${OUT:-gpu-out}/log.txt"
