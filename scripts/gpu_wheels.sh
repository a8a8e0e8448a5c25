#!/usr/bin/env bash
# Fill .whl/ with the wheels the device machine lacks (segment-anything, pycocotools, pydantic
# and its parts) and .gpufix/ with the fixtures the device check reads, both ignored by git
# (.gitignore),
# for `scripts/gpu_check.sh` there (carry both: run(carry=[".whl", ".gpufix"])).
# The device has Python 3.12 on x86-64 with torch, transformers, typer, rich and opencv
# (/work/.library/device/KINDS.md); versions below are this checkout's venv's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p .whl .gpufix
version() { "$PY" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
platforms=""
for n in 28 27 17; do platforms+=" --platform manylinux_2_${n}_x86_64"; done
platforms+=" --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
for pkg in segment-anything pycocotools pydantic pydantic-core annotated-types \
           typing-inspection; do
  v=$(version "$pkg")
  spec=$pkg${v:+==$v}
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $platforms -d .whl "$spec" \
  || "$PY" -m pip wheel -q --no-deps -w .whl "$spec"  # segment-anything: an sdist only
done
src=../shared/fixtures
mkdir -p .gpufix/ade20k_full_samples .gpufix/cityscapes_sample
cp -n "$src"/ade20k_full_samples/ADE_train_00016964.jpg \
      "$src"/ade20k_full_samples/ADE_train_00016869.jpg .gpufix/ade20k_full_samples/
cp -n "$src"/cityscapes_sample/* .gpufix/cityscapes_sample/
du -sh .whl .gpufix
