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
// Any other onnxfuse.* key (a typo such as onnxfuse.cpu_kernl) fails the session, where ORT can
// list a session's entries (C API 23, ORT >= 1.23; older ORTs cannot, and skip that check).
// The CUDA kernels need no CUDA headers or driver: they only pass device pointers and the stream.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdio>
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

// The keys RegisterCustomOps reads (the header comment above says what each means).
constexpr const char* kConfigKeys[] = {"onnxfuse.cpu_kernel", "onnxfuse.debug_offset", "onnxfuse.backend",
                                       "onnxfuse.device", "onnxfuse.precision"};

// ORT's C API only ever appends to OrtApi, so a function's slot in it is fixed for good. These
// three are past the API 21 header this library builds against; the slots are
// offsetof(OrtApi, F) / sizeof(void*) in ORT 1.23's onnxruntime_c_api.h (API 23).
constexpr uint32_t kListApiVersion = 23;
constexpr size_t kSlotGetKeyValuePairs = 298;       // since 1.22
constexpr size_t kSlotReleaseKeyValuePairs = 300;   // since 1.22
constexpr size_t kSlotGetSessionOptionsConfigEntries = 379;  // since 1.23

// Every config key of the session, or nothing where ORT is older than 1.23 (it cannot list them).
std::vector<std::string> ConfigKeys(const OrtSessionOptions* so, const OrtApiBase* base) {
  std::vector<std::string> keys;
  // Ask for API 23 only where ORT has it: an older ORT prints a line to stderr for every
  // GetApi of a version it lacks (API version N is ORT 1.N).
  int major = 0, minor = 0;
  if (std::sscanf(base->GetVersionString(), "%d.%d", &major, &minor) != 2 ||
      major * 1000 + minor < 1000 + int(kListApiVersion))
    return keys;
  const OrtApi* api = base->GetApi(kListApiVersion);
  if (!api) return keys;
  using ListFn = OrtStatus*(ORT_API_CALL*)(const OrtSessionOptions*, void**);
  using PairsFn = void(ORT_API_CALL*)(const void*, const char* const**, const char* const**, size_t*);
  using ReleaseFn = void(ORT_API_CALL*)(void*);
  void* const* slots = reinterpret_cast<void* const*>(api);
  auto list = reinterpret_cast<ListFn>(slots[kSlotGetSessionOptionsConfigEntries]);
  auto pairs = reinterpret_cast<PairsFn>(slots[kSlotGetKeyValuePairs]);
  auto release = reinterpret_cast<ReleaseFn>(slots[kSlotReleaseKeyValuePairs]);
  void* kvps = nullptr;
  if (OrtStatus* st = list(so, &kvps)) {
    api->ReleaseStatus(st);
    return keys;
  }
  if (!kvps) return keys;
  const char* const* names = nullptr;
  const char* const* values = nullptr;
  size_t n = 0;
  pairs(kvps, &names, &values, &n);
  try {
    for (size_t i = 0; i < n; ++i) keys.emplace_back(names[i]);
  } catch (...) {
    release(kvps);
    throw;
  }
  release(kvps);
  return keys;
}

// Refuses an onnxfuse.* key that RegisterCustomOps does not read: a typo would otherwise be ignored.
void CheckConfigKeys(const OrtSessionOptions* so, const OrtApiBase* base) {
  const std::string prefix = "onnxfuse.";
  for (const std::string& key : ConfigKeys(so, base)) {
    if (key.compare(0, prefix.size(), prefix) != 0) continue;
    if (std::any_of(std::begin(kConfigKeys), std::end(kConfigKeys), [&](const char* k) { return key == k; }))
      continue;
    std::string known;
    for (const char* k : kConfigKeys) known += (known.empty() ? "" : ", ") + std::string(k);
    throw Ort::Exception("unknown session config key " + key + ": the onnxfuse plugin reads " + known,
                         ORT_INVALID_ARGUMENT);
  }
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

OrtStatus* Register(OrtSessionOptions* options, const OrtApiBase* base, const OrtApi* api) {
  CheckConfigKeys(options, base);
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
    return onnxfuse::Register(options, api_base, api);
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_RUNTIME_EXCEPTION, e.what());
  }
}

}  // extern "C"
