// What the registration (plugin.cc) and the op sources (ops/*.cc) share.
//
// A fused op costs one source, ops/<op>.cc, defining AddOps_<OpType>: the registration calls it
// for every op of ONNXFUSE_FOR_EACH_OP (onnxfuse_ops.h, generated from onnxfuse/ops.py), so an op
// in the registry without its source is a link error, not a silent gap.
#pragma once
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bridge_abi.h"
#include "onnxfuse_ops.h"

namespace onnxfuse {

// Which kernel a session's ops run (onnxfuse.cpu_kernel / onnxfuse.backend / onnxfuse.device).
enum class Impl { MatMul = 0, Naive = 1, Off = 2, Triton = 3 };

// One session's settings, read from its config entries by RegisterCustomOps.
struct Config {
  Impl impl = Impl::MatMul;
  bool cuda = false;
  int32_t precision = 0;  // index into onnxfuse_ops::kPrecisions (triton backend, float32)
  float debug_offset = 0.f;  // added to every output of the native CPU kernels (tests)
  const char* ExecutionProvider() const { return cuda ? "CUDAExecutionProvider" : "CPUExecutionProvider"; }
};

// The C++ type ORT uses for an ONNX element type code; keyed by the registry's codes
// (onnxfuse_ops::kElementType_*), so a code ORT does not map to that type fails to compile.
template <int32_t Code> struct CppType;
template <> struct CppType<ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT> { using type = float; };
template <> struct CppType<ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16> { using type = Ort::Float16_t; };
template <> struct CppType<ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16> { using type = Ort::BFloat16_t; };

// The custom ops one session registers; they live as long as the library (ORT keeps pointers).
using OpList = std::vector<std::shared_ptr<OrtCustomOp>>;

#define ONNXFUSE_DECLARE_ADD_OPS(op) void AddOps_##op(const Config& cfg, OpList& ops);
ONNXFUSE_FOR_EACH_OP(ONNXFUSE_DECLARE_ADD_OPS)
#undef ONNXFUSE_DECLARE_ADD_OPS

// Count one run of `impl` (onnxfuse_kernel_runs: tests prove which kernel ran).
void CountRun(Impl impl);

// The index of `value` in `values[0..count)`, or -1.
int IndexOf(const char* const* values, int count, const std::string& value);

// `shape` as "[a, b]" for error messages.
std::string FormatShape(const std::vector<int64_t>& shape);

// Point a bridge tensor at ORT's buffer (no copy).
void FillTensor(OnnxfuseTensor& t, const void* data, const std::vector<int64_t>& shape, const char* op);

// The triton backend: complete `call` (version, device, stream, precision) and hand it to the Python
// kernel. Throws Ort::Exception with the Python error when it fails or when none is installed.
void CallPython(OnnxfuseCall& call, const Config& cfg, Ort::KernelContext& ctx, const char* op);

}  // namespace onnxfuse
