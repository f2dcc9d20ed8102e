// The C ABI between the plugin and Python (onnxfuse/kernels/bridge.py mirrors it with ctypes).
//
// The triton backend needs no Python headers: Python hands the library a C callback through
// onnxfuse_set_triton_callback (a ctypes.CFUNCTYPE; ctypes takes the GIL when ORT's thread calls
// it). A kernel fills an OnnxfuseCall with ORT's own buffers (no copy), the op's id and attribute
// codes (onnxfuse/ops.py), the element type and, on CUDA, ORT's compute stream; a non-zero return
// plus the message the callback wrote into call->error becomes an ORT error (the run fails, the
// process and the session survive).
//
// Python checks this layout field by field when it loads the library (onnxfuse_bridge_abi()
// describes it): bump ONNXFUSE_BRIDGE_VERSION on any change.
#pragma once
#include <cstdint>

#include "onnxfuse_ops.h"

#define ONNXFUSE_BRIDGE_VERSION 2
#define ONNXFUSE_MAX_DIMS 8
#define ONNXFUSE_MAX_ATTRIBUTES (onnxfuse_ops::kMaxAttributes > 0 ? onnxfuse_ops::kMaxAttributes : 1)
#define ONNXFUSE_ERROR_BYTES 1024

extern "C" {

typedef struct {
  void* data;  // NULL for an absent optional input
  int64_t ndim;
  int64_t shape[ONNXFUSE_MAX_DIMS];
} OnnxfuseTensor;

typedef struct {
  int32_t version;         // ONNXFUSE_BRIDGE_VERSION
  int32_t op_id;           // the op's OpSpec.op_id
  int32_t elem_type;       // ONNX TensorProto element type (ops.ELEMENT_TYPES)
  int32_t device;          // 0 cpu, 1 cuda
  int32_t device_id;
  int32_t precision;       // index into ops.PRECISIONS
  int32_t num_inputs;      // the node's inputs (absent optional ones have data == NULL)
  int32_t num_outputs;
  int32_t num_attributes;
  int32_t attributes[ONNXFUSE_MAX_ATTRIBUTES];  // value codes, in the op's attribute order
  void* stream;            // ORT's compute stream (cudaStream_t) on CUDA, else NULL
  OnnxfuseTensor inputs[onnxfuse_ops::kMaxInputs];
  OnnxfuseTensor outputs[onnxfuse_ops::kMaxOutputs];
  char error[ONNXFUSE_ERROR_BYTES];  // NUL-terminated message the callback writes when it fails
} OnnxfuseCall;

typedef int (*OnnxfuseTritonFn)(OnnxfuseCall*);

// Every field, in order, for onnxfuse_bridge_abi(): keep in step with the structs above (the
// struct sizes are checked too, so a field missing here is still caught).
#define ONNXFUSE_TENSOR_FIELDS(X) X(data) X(ndim) X(shape)
#define ONNXFUSE_CALL_FIELDS(X)                                                                     \
  X(version) X(op_id) X(elem_type) X(device) X(device_id) X(precision) X(num_inputs) X(num_outputs) \
  X(num_attributes) X(attributes) X(stream) X(inputs) X(outputs) X(error)

#define ONNXFUSE_EXPORT __attribute__((visibility("default")))

// Install (or, with NULL, remove) the triton backend's callback; returns ONNXFUSE_BRIDGE_VERSION.
ONNXFUSE_EXPORT int onnxfuse_set_triton_callback(OnnxfuseTritonFn fn);
// The layout of the structs above as JSON: {"version", "call"/"tensor": {"size", "fields":
// {name: [offset, size]}}}.
ONNXFUSE_EXPORT const char* onnxfuse_bridge_abi(void);
// The registry the library was built with: json.dumps(onnxfuse.ops.contract(), sort_keys=True).
ONNXFUSE_EXPORT const char* onnxfuse_contract(void);
// Kernel runs per implementation since load (0 matmul, 1 naive, 2 off, 3 triton; -1 for another).
ONNXFUSE_EXPORT int64_t onnxfuse_kernel_runs(int impl);
}
