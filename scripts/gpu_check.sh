#!/usr/bin/env bash
# The one device command for a lent GPU: install the wheels its image lacks, run scripts/gpu_check.py into $OUT.
#
# Prepare here, once (the device image has torch, torchmetrics, safetensors, pandas, seaborn, but no diffusers):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform any -d .whl diffusers==0.42.1
# Then call the device tool's run with carry [".whl"] and the command `bash scripts/gpu_check.sh`, timeout_s 540.
# It writes $OUT/gpu_check.json (checks, timings with peak memory, the extrapolated paper-profile minutes per
# notebook) and $OUT/gpu_check.log, and ends within 8 minutes. On the CPU, at tiny sizes, without extrapolation:
#   PYTHON=.venv/bin/python OUT=/tmp/gpu bash scripts/gpu_check.sh --dry-run
set -euo pipefail
cd "$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")"
out=${OUT:-.}
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
# PYTHON: the interpreter (default python3, the device image's); here: PYTHON=.venv/bin/python ... --dry-run
timeout 480 "${PYTHON:-python3}" scripts/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
