#!/usr/bin/env bash
# The device check: on a bare CUDA machine (PyTorch, transformers, typer, rich, opencv there;
# segment-anything, pycocotools, pydantic from the wheels that scripts/gpu_wheels.sh put in
# .whl/, no network), run the CUDA tests, then the benchmark (scripts/gpu_check.py), all within
# 8 minutes on one GPU. Results: $OUT (default /tmp/ssa-gpu-check): gpu_tests.log,
# summary.txt, results.json and one log per benchmark step. The steps include the hf: path
# (transformers' mask-generation pipeline + vote against ssa's hf: source: a random SAM 2 in
# fp32, bf16 and bf16 + compile, then a random EdgeTAM where timm is installed).
#   here:   scripts/gpu_wheels.sh
#   there:  scripts/gpu_check.sh          (device tool: run(carry=[".whl", ".gpufix"]))
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ssa-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/ssa-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/ssa-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# The tests and the benchmark read ../shared/fixtures; the carried copy stands in for it.
if [ ! -d ../shared/fixtures ] && [ -d .gpufix ]; then
  mkdir -p ../shared && ln -sfn "$PWD/.gpufix" ../shared/fixtures
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
start=$(date +%s)
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')" | tee "$OUT/env.txt"
timeout 150 "$PY" -m pytest -q -m cuda tests/gpu -p no:cacheprovider -x --durations=10 2>&1 \
  | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
used=$(( $(date +%s) - start ))
# What is left of the 8 minutes, less 40 s for the throughput step's grace and the summary.
budget=$(( 480 - used - 160 ))
"$PY" scripts/gpu_check.py --out "$OUT" --budget-s "$budget" 2>&1 | tee "$OUT/benchmark.log"
bench_rc=${PIPESTATUS[0]}
echo "tests rc=$tests_rc benchmark rc=$bench_rc total $(( $(date +%s) - start )) s"
exit $(( tests_rc || bench_rc ))
