#!/usr/bin/env bash
# The GPU checks of issues 4-6, for one lease of a lent GPU machine (/work/.library/device).
# NOT YET RUN: no GPU was lent to the sessions that wrote it; expect to adapt it on first use.
# The device image has python3 (3.12) with torch (CUDA 13), triton (3.6 when last read),
# onnx and the CPU build of onnxruntime; no network. Results go to $OUT (they come back).
#
#   bash benchmarks/gpu_checks.sh kernels   # issue 4: image packages only, one call (280+200+90 s at most;
#       the benchmark rewrites its JSON after each shape, so a cut run keeps what it measured)
#       Triton kernel benchmark on the acceptance shapes (notebook n=2048, Llama-7B n=1;
#       autotuned and fixed tiles vs eager and torch.compile; acceptance lines at the end),
#       then the kernel tests compiled on the GPU.
#   bash benchmarks/gpu_checks.sh kernels-full   # every shape (adds n=16 and n=2048 at 7B)
#   bash benchmarks/gpu_checks.sh part NN   # stage .gpu/ortgpu-part-NN (carried) in /tmp
#   bash benchmarks/gpu_checks.sh ort       # issues 5, 6: join the parts, install
#       onnxruntime-gpu, run the plugin's CUDA tests and parity/bench of the fused seed MLP.
#
# The ort tier needs `bash benchmarks/gpu_prepare.sh` here first, then one `run` per part
# (carry [".gpu/ortgpu-part-NN"], command `bash benchmarks/gpu_checks.sh part NN`) while the
# machine stays warm (it is given back 30 s after a call), and a last call carrying
# [".gpu/ortgpu-name", ".gpu/ortgpu-sha256", ".gpu/wheels", "onnxfuse/kernels/_lib"].
set -euo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
STAGE=/tmp/onnxfuse-ortgpu
SITE=/tmp/onnxfuse-gpu-site
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export ONNXFUSE_TEST_GPU=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET

info() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee -a "$OUT/gpu.txt"
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
}

case "${1:-}" in
kernels)
  info
  # 1. The benchmark first: it is what the issue measures (tidy JSON + acceptance lines).
  timeout 280 $PY benchmarks/kernels.py --quick --json "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.txt" | tail -60 || true
  # 2. The kernel tests, compiled. First every candidate tile (TMA ones on TMA-able rows,
  #    float32/TF32 and bf16), TMA tiles, autotuning inside a CUDA graph capture; then the
  #    random odd shapes (one chunk of 25 per dtype: each shape is a JIT compile), split-K,
  #    NaN/Inf, errors. Full logs come back; the last lines show here.
  timeout 200 $PY -m pytest tests/kernels/test_tuning.py -v -p no:cacheprovider 2>&1 \
    | tee "$OUT/kernel-tests-tuning.txt" | tail -8 || true
  timeout 90 $PY -m pytest tests/kernels/test_gated_mlp.py -v -p no:cacheprovider \
    -k "not random_odd or float32-0 or float16-0 or bfloat16-0" 2>&1 \
    | tee "$OUT/kernel-tests-gated.txt" | tail -8 || true
  ;;
kernels-full)
  info
  timeout 560 $PY benchmarks/kernels.py --json "$OUT/kernels-full.json" 2>&1 | tee "$OUT/kernels-full.txt" | tail -80 || true
  ;;
part)
  mkdir -p "$STAGE"
  cp ".gpu/ortgpu-part-$2" "$STAGE/"
  ls -la "$STAGE"
  ;;
ort)
  info
  if [ ! -d "$SITE/onnxruntime" ]; then
    wheel="$STAGE/$(cat .gpu/ortgpu-name)"
    cat "$STAGE"/ortgpu-part-* > "$wheel"
    echo "$(cat .gpu/ortgpu-sha256)  $wheel" | sha256sum -c -
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$wheel" .gpu/wheels/*.whl
  fi
  export PYTHONPATH="$SITE:$PYTHONPATH"
  $PY -c "import onnxruntime as o; o.preload_dlls(); print(o.__version__, o.get_available_providers())" | tee -a "$OUT/gpu.txt"
  # The plugin on ORT's CUDA provider: parity fp32/fp16, bf16, a raising kernel (issue 5).
  timeout 240 $PY -m pytest tests/kernels/test_ort_cuda.py -q -x -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/ort-cuda-tests.txt" || true
  # The fused seed MLP on ORT CUDA: parity and bench against the unfused graph (issues 5, 6).
  cli() { $PY -m onnxfuse.pipeline.cli "$@"; }
  cli export --model seed --part mlp -o "$OUT/mlp.onnx" --force -q
  cli rewrite "$OUT/mlp.onnx" -o "$OUT/mlp-fused.onnx" --force -q
  cli parity "$OUT/mlp.onnx" "$OUT/mlp-fused.onnx" --device cuda --backend default \
    --json "$OUT/parity-cuda.json" --force | tail -8 || true
  cli bench "$OUT/mlp.onnx" "$OUT/mlp-fused.onnx" --device cuda --backend none,default \
    --batch 1 --seq 2048 --repeat 50 --json "$OUT/bench-cuda.json" --force | tail -8 || true
  rm -f "$OUT"/*.onnx "$OUT"/*.onnx.data
  ;;
*)
  echo "usage: $0 kernels | kernels-full | part NN | ort" >&2
  exit 2
  ;;
esac
