// The onnxfuse ORT custom-op library: registration, session settings and the bridge's exports.
//
// RegisterCustomOps registers every op of the registry (ONNXFUSE_FOR_EACH_OP, generated from
// onnxfuse/ops.py) in domain onnxfuse_ops::kDomain for the CPU or the CUDA EP, reading these
// session config entries (per session):
//   onnxfuse.cpu_kernel   = "matmul" (ORT's own MatMul via Ort::Op) | "naive" (reference loops)
//                         | "off" (register nothing: CPU nodes run their model-local function body)
//   onnxfuse.debug_offset = float added to every output element (debug only; proves the kernel ran)
//   onnxfuse.backend      = "default" | "triton" (call the Python bridge: onnxfuse.kernels.ort.bridge)
//   onnxfuse.device       = "cpu" (default) | "cuda" (register for the CUDA EP; the triton backend)
//   onnxfuse.precision    = onnxfuse_ops::kPrecisions: float32 dot precision of the triton backend
// The CUDA kernels need no CUDA headers or driver: they only pass device pointers and the stream.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstring>
#include <mutex>

#include "plugin.h"

static_assert(ORT_API_VERSION >= 21, "need ORT headers with API version >= 21");

namespace onnxfuse {
namespace {

constexpr uint32_t kApiVersion = 21;  // request 21 so the library loads in ORT >= 1.21

std::atomic<OnnxfuseTritonFn> g_triton{nullptr};
std::atomic<int64_t> g_runs[4];

}  // namespace

void CountRun(Impl impl) { g_runs[static_cast<int>(impl)].fetch_add(1); }

int IndexOf(const char* const* values, int count, const std::string& value) {
  for (int i = 0; i < count; ++i)
    if (value == values[i]) return i;
  return -1;
}

std::string FormatShape(const std::vector<int64_t>& shape) {
  std::string r = "[";
  for (size_t i = 0; i < shape.size(); ++i) r += (i ? ", " : "") + std::to_string(shape[i]);
  return r + "]";
}

void FillTensor(OnnxfuseTensor& t, const void* data, const std::vector<int64_t>& shape, const char* op) {
  if (shape.size() > ONNXFUSE_MAX_DIMS)
    throw Ort::Exception(std::string("onnxfuse::") + op + ": more than " + std::to_string(ONNXFUSE_MAX_DIMS) +
                         " dims", ORT_INVALID_ARGUMENT);
  t.data = const_cast<void*>(data);
  t.ndim = int64_t(shape.size());
  std::copy(shape.begin(), shape.end(), t.shape);
}

void CallPython(OnnxfuseCall& call, const Config& cfg, Ort::KernelContext& ctx, const char* op) {
  OnnxfuseTritonFn fn = g_triton.load();
  if (!fn)
    throw Ort::Exception(std::string("onnxfuse::") + op + ": the triton backend has no Python kernel installed: "
                         "create the session with onnxfuse.kernels.ort.session_options(backend='triton')",
                         ORT_FAIL);
  call.version = ONNXFUSE_BRIDGE_VERSION;
  call.device = cfg.cuda ? 1 : 0;
  call.precision = cfg.precision;
  if (cfg.cuda) {
    call.stream = ctx.GetGPUComputeStream();
    call.device_id = ctx.GetInput(0).GetTensorMemoryInfo().GetDeviceId();
  }
  if (fn(&call) != 0) {
    call.error[sizeof(call.error) - 1] = '\0';
    throw Ort::Exception(std::string("onnxfuse::") + op + " (triton backend): " +
                         (call.error[0] ? call.error : "the Python kernel failed"), ORT_RUNTIME_EXCEPTION);
  }
}

namespace {

// One session's ops and domain: they must outlive every session using them, so the library keeps
// them until it is unloaded.
struct Registration {
  OpList ops;
  OrtCustomOpDomain* domain = nullptr;
};
std::mutex g_mu;
std::vector<std::unique_ptr<Registration>> g_regs;

std::string ConfigEntry(const OrtSessionOptions* so, const char* key) {
  const OrtApi& api = Ort::GetApi();
  int has = 0;
  if (OrtStatus* st = api.HasSessionConfigEntry(so, key, &has)) { api.ReleaseStatus(st); return {}; }
  if (!has) return {};
  size_t sz = 0;
  if (OrtStatus* st = api.GetSessionConfigEntry(so, key, nullptr, &sz)) api.ReleaseStatus(st);
  std::string v(sz, '\0');
  if (OrtStatus* st = api.GetSessionConfigEntry(so, key, v.data(), &sz)) { api.ReleaseStatus(st); return {}; }
  v.resize(sz ? sz - 1 : 0);
  return v;
}

// The value's index in `choices`; an empty (absent) value is the first choice.
int Choose(const std::string& key, const std::string& value, std::initializer_list<const char*> choices) {
  if (value.empty()) return 0;
  int i = 0;
  for (const char* c : choices) {
    if (value == c) return i;
    ++i;
  }
  std::string known;
  for (const char* c : choices) known += (known.empty() ? "" : ", ") + std::string(c);
  throw Ort::Exception(key + ": unknown value " + value + " (" + known + ")", ORT_INVALID_ARGUMENT);
}

Config ReadConfig(const OrtSessionOptions* options) {
  Config cfg;
  const Impl cpu_kernels[] = {Impl::MatMul, Impl::Naive, Impl::Off};
  cfg.impl = cpu_kernels[Choose("onnxfuse.cpu_kernel", ConfigEntry(options, "onnxfuse.cpu_kernel"),
                                {"matmul", "naive", "off"})];
  const std::string off = ConfigEntry(options, "onnxfuse.debug_offset");
  if (!off.empty()) {
    try {
      cfg.debug_offset = std::stof(off);
    } catch (const std::exception&) {
      throw Ort::Exception("onnxfuse.debug_offset: not a number: " + off, ORT_INVALID_ARGUMENT);
    }
  }
  if (Choose("onnxfuse.backend", ConfigEntry(options, "onnxfuse.backend"), {"default", "triton"}) == 1)
    cfg.impl = Impl::Triton;
  if (Choose("onnxfuse.device", ConfigEntry(options, "onnxfuse.device"), {"cpu", "cuda"}) == 1) {
    cfg.cuda = true;
    cfg.impl = Impl::Triton;  // on CUDA both backends launch the Triton kernel (no native CUDA kernel yet)
  }
  const std::string precision = ConfigEntry(options, "onnxfuse.precision");
  if (!precision.empty()) {
    cfg.precision = IndexOf(onnxfuse_ops::kPrecisions, onnxfuse_ops::kNumPrecisions, precision);
    if (cfg.precision < 0) {
      std::string known;
      for (const char* p : onnxfuse_ops::kPrecisions) known += (known.empty() ? "" : ", ") + std::string(p);
      throw Ort::Exception("onnxfuse.precision: unknown value " + precision + " (" + known + ")",
                           ORT_INVALID_ARGUMENT);
    }
  }
  return cfg;
}

OrtStatus* Register(OrtSessionOptions* options, const OrtApi* api) {
  const Config cfg = ReadConfig(options);
  if (cfg.impl == Impl::Off) return nullptr;  // CPU: leave nodes to their function body
  auto reg = std::make_unique<Registration>();
#define ONNXFUSE_ADD_OPS(op) AddOps_##op(cfg, reg->ops);
  ONNXFUSE_FOR_EACH_OP(ONNXFUSE_ADD_OPS)
#undef ONNXFUSE_ADD_OPS
  std::lock_guard<std::mutex> lk(g_mu);
  if (OrtStatus* st = api->CreateCustomOpDomain(onnxfuse_ops::kDomain, &reg->domain)) return st;
  for (const auto& op : reg->ops)
    if (OrtStatus* st = api->CustomOpDomain_Add(reg->domain, op.get())) return st;
  if (OrtStatus* st = api->AddCustomOpDomain(options, reg->domain)) return st;
  g_regs.push_back(std::move(reg));
  return nullptr;
}

// The bridge's layout as JSON (see bridge_abi.h).
std::string AbiJson() {
  std::string call = "{\"size\": " + std::to_string(sizeof(OnnxfuseCall)) + ", \"fields\": {";
#define ONNXFUSE_CALL_FIELD(f)                                                                  \
  call += std::string(call.back() == '{' ? "" : ", ") + "\"" #f "\": [" +                       \
          std::to_string(offsetof(OnnxfuseCall, f)) + ", " + std::to_string(sizeof(OnnxfuseCall::f)) + "]";
  ONNXFUSE_CALL_FIELDS(ONNXFUSE_CALL_FIELD)
#undef ONNXFUSE_CALL_FIELD
  std::string tensor = "{\"size\": " + std::to_string(sizeof(OnnxfuseTensor)) + ", \"fields\": {";
#define ONNXFUSE_TENSOR_FIELD(f)                                                                \
  tensor += std::string(tensor.back() == '{' ? "" : ", ") + "\"" #f "\": [" +                   \
            std::to_string(offsetof(OnnxfuseTensor, f)) + ", " + std::to_string(sizeof(OnnxfuseTensor::f)) + "]";
  ONNXFUSE_TENSOR_FIELDS(ONNXFUSE_TENSOR_FIELD)
#undef ONNXFUSE_TENSOR_FIELD
  return "{\"version\": " + std::to_string(ONNXFUSE_BRIDGE_VERSION) + ", \"call\": " + call + "}}, \"tensor\": " +
         tensor + "}}}";
}

}  // namespace
}  // namespace onnxfuse

extern "C" {

ONNXFUSE_EXPORT int onnxfuse_set_triton_callback(OnnxfuseTritonFn fn) {
  onnxfuse::g_triton.store(fn);
  return ONNXFUSE_BRIDGE_VERSION;
}

ONNXFUSE_EXPORT const char* onnxfuse_bridge_abi(void) {
  static const std::string abi = onnxfuse::AbiJson();
  return abi.c_str();
}

ONNXFUSE_EXPORT const char* onnxfuse_contract(void) { return onnxfuse_ops::kContract; }

ONNXFUSE_EXPORT int64_t onnxfuse_kernel_runs(int impl) {
  return impl >= 0 && impl < 4 ? onnxfuse::g_runs[impl].load() : -1;
}

ONNXFUSE_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(onnxfuse::kApiVersion);
  if (!api) return nullptr;  // cannot even create a status without an API table; ORT < 1.21
  Ort::InitApi(api);
  try {
    return onnxfuse::Register(options, api);
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_RUNTIME_EXCEPTION, e.what());
  }
}

}  // extern "C"
