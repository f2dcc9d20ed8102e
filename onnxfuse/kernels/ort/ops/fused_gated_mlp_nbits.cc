// onnxfuse::FusedGatedMLPNBits (onnxfuse/ops.py: FUSED_GATED_MLP_NBITS): the gated MLP over
// com.microsoft::MatMulNBits projections.
//
// No kernel is registered yet, in any session: ORT then runs each node's model-local function
// body (the original MatMulNBits nodes, on ORT's own prepacked int4/int8 kernels), which is the
// CPU default the op is designed for. Measured (onnxruntime 1.32): with the onnxfuse domain
// registered for FusedGatedMLP alone, a node of another op of that domain still runs its function.
// The triton backend's kernel (dequantizing in the K loop) comes with its Python kernel
// (OpSpec.kernel); it will register here as FusedGatedMLP does.
#include "plugin.h"

namespace onnxfuse {

static_assert(onnxfuse_ops::kFusedGatedMLPNBits_NumOutputs == 1, "FusedGatedMLPNBits has one output");

void AddOps_FusedGatedMLPNBits(const Config& /*cfg*/, OpList& /*ops*/) {}

}  // namespace onnxfuse
