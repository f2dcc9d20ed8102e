#!/usr/bin/env bash
# Every GPU check of issues 4-6 in one lease of a lent GPU machine (see /work/.library/device).
# NOT YET RUN: no GPU was lent to the sessions that wrote it; expect to adapt it on first use.
#
# The device image has python3 (3.12) with torch (CUDA 13), triton, onnxruntime (CPU build)
# and no network. Prepare on the CPU machine, in ignored paths that `run` carries:
#   onnxfuse/kernels/_lib/        the plugin .so (built here; it needs no CUDA or Python headers)
#   .gpu/ortgpu-part-*            onnxruntime-gpu (CUDA 13 wheel, ~255 MB) split into < 60 MiB
#                                 parts, carried one per call while the machine stays warm
#   .gpu/wheels/                  cp312 wheels the image lacks (onnx, onnxscript, onnx-ir,
#                                 ml-dtypes, ...): `pip download --python-version 3.12
#                                 --only-binary=:all: -d .gpu/wheels onnx onnxscript onnx-ir ...`
# Then: `bash benchmarks/gpu_checks.sh` (each step writes under $OUT; the last lines are a table).
set -euo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
SITE=${SITE:-/tmp/onnxfuse-gpu-site}
PY=${PY:-python3}

if [ ! -d "$SITE/onnxruntime" ]; then
  cat .gpu/ortgpu-part-* > /tmp/onnxruntime_gpu.whl
  $PY -m pip install -q --no-deps --target "$SITE" /tmp/onnxruntime_gpu.whl
  [ -d .gpu/wheels ] && $PY -m pip install -q --no-deps --target "$SITE" .gpu/wheels/*.whl
fi
export PYTHONPATH="$SITE:$PWD"
export ONNXFUSE_TEST_GPU=1
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -c "import onnxruntime as o; print(o.__version__, o.get_available_providers())" | tee -a "$OUT/gpu.txt"

# 1. Kernels compiled on the GPU: the interpreter suite's checks, on device (issue 4).
$PY -m pytest tests/kernels/test_gated_mlp.py tests/kernels/test_aot.py -q -x 2>&1 | tail -5 | tee "$OUT/kernels-tests.txt"
# 2. The plugin on ORT's CUDA provider: parity, bf16, a raising kernel (issue 5).
$PY -m pytest tests/kernels/test_ort_cuda.py -q -x 2>&1 | tail -5 | tee "$OUT/ort-cuda-tests.txt"
# 3. Kernel benchmarks: fused vs eager vs torch.compile, notebook and Llama-7B shapes (issue 4).
$PY benchmarks/kernels.py --json "$OUT/kernels.json" 2>&1 | tail -20 | tee "$OUT/kernels.txt"
# 4. The fused seed MLP on ORT CUDA: parity and bench against the unfused graph (issues 5, 6).
$PY -m onnxfuse.pipeline.cli export --model seed --part mlp -o "$OUT/mlp.onnx" --force -q
$PY -m onnxfuse.pipeline.cli rewrite "$OUT/mlp.onnx" -o "$OUT/mlp-fused.onnx" --force -q
$PY -m onnxfuse.pipeline.cli parity "$OUT/mlp.onnx" "$OUT/mlp-fused.onnx" --device cuda \
  --json "$OUT/parity-cuda.json" | tail -8
$PY -m onnxfuse.pipeline.cli bench "$OUT/mlp.onnx" "$OUT/mlp-fused.onnx" --device cuda \
  --backend none,default --batch 1 --seq 2048 --repeat 50 --json "$OUT/bench-cuda.json" | tail -8
