#!/usr/bin/env bash
# Prepare, on the CPU machine, what benchmarks/gpu_checks.sh needs beyond the device image
# (see /work/.library/device): the device has Python 3.12 with torch, triton, onnx and the CPU
# build of onnxruntime, and no network. Everything lands in ignored paths that `run` carries.
#
#   .gpu/ortgpu-part-NN   onnxruntime-gpu (CUDA 13 build, ~255 MB) cut into parts under one
#                         call's 64 MiB carry; carry one per call, join them there
#   .gpu/wheels/          cp312 wheels the image lacks or has too old (onnx-ir >= 1.1)
#   onnxfuse/kernels/_lib the plugin (built by `make install`; it needs no CUDA or Python headers)
#
# The kernel checks of issue 4 (`gpu_checks.sh kernels`) need none of this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
ORT_VERSION=${ORT_VERSION:-}   # empty: the newest onnxruntime-gpu on PyPI
PART_BYTES=$((50 * 1024 * 1024))
WHEEL_ARGS=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

mkdir -p .gpu/wheels .gpu/download
if ! ls .gpu/ortgpu-part-* >/dev/null 2>&1; then
  $PY -m pip download -q "${WHEEL_ARGS[@]}" -d .gpu/download "onnxruntime-gpu${ORT_VERSION:+==$ORT_VERSION}"
  wheel=$(ls .gpu/download/onnxruntime_gpu-*.whl)
  split -b "$PART_BYTES" -d -a 2 "$wheel" .gpu/ortgpu-part-
  basename "$wheel" > .gpu/ortgpu-name
  sha256sum "$wheel" | cut -d' ' -f1 > .gpu/ortgpu-sha256
  rm -f "$wheel"
fi
$PY -m pip download -q "${WHEEL_ARGS[@]}" -d .gpu/wheels "onnx-ir>=1.1"
[ -f onnxfuse/kernels/_lib/libonnxfuse_ort.so ] || { echo "build the plugin first: make install" >&2; exit 1; }
echo "ready: $(cat .gpu/ortgpu-name) in $(ls .gpu/ortgpu-part-* | wc -l) parts; wheels: $(ls .gpu/wheels)"
du -ch .gpu/ortgpu-part-* .gpu/wheels onnxfuse/kernels/_lib | tail -1
