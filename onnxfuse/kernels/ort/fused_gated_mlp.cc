// onnxfuse ORT custom-op library: registers onnxfuse::FusedGatedMLP (CPU EP; float, float16, bfloat16).
//   Y = act(X @ W_gate + B_gate) * (X @ W_up + B_up) @ W_down + B_down
// Inputs: X[..., d], W_gate[d,dff], W_up[d,dff], W_down[dff,d], optional B_gate[dff], B_up[dff], B_down[d]
// Attribute: activation = "silu" (default) | "gelu" | "gelu_tanh"
// Session config entries read by RegisterCustomOps (per session):
//   onnxfuse.cpu_kernel   = "matmul" (ORT's own MatMul via Ort::Op) | "naive" (reference loops)
//                         | "off" (register nothing: CPU nodes run their model-local function body)
//   onnxfuse.debug_offset = float added to every output element (debug only; proves the kernel ran)
//   onnxfuse.debug_ep     = EP name to register the kernels for instead of CPUExecutionProvider (debug only)
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

static_assert(ORT_API_VERSION >= 21, "need ORT headers with API version >= 21");
static constexpr uint32_t kApiVersion = 21;  // request 21 so the library loads in ORT >= 1.21

namespace {

enum class Act { Silu, Gelu, GeluTanh };
enum class Impl { MatMul, Naive, Off };

struct Config {
  Impl impl = Impl::MatMul;
  float debug_offset = 0.f;
  std::string ep = "CPUExecutionProvider";  // debug: onnxfuse.debug_ep overrides (tests function fallback)
};

// ---- element conversions -------------------------------------------------
template <typename T> inline float to_f(T v) { return v.ToFloat(); }
template <> inline float to_f<float>(float v) { return v; }
template <typename T> inline T from_f(float v) { return T(v); }
template <> inline float from_f<float>(float v) { return v; }

template <typename T> constexpr ONNXTensorElementDataType elem_type();
template <> constexpr ONNXTensorElementDataType elem_type<float>() { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
template <> constexpr ONNXTensorElementDataType elem_type<Ort::Float16_t>() { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
template <> constexpr ONNXTensorElementDataType elem_type<Ort::BFloat16_t>() { return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16; }

// ---- activations ----------------------------------------------------------
// Vectorizable expf (Cephes-style range reduction + degree-5 polynomial, rel err ~2e-7). Written with
// plain arithmetic and ternaries only, so g++ -O3 auto-vectorizes it even at the SSE2 baseline
// (std::nearbyint / std::fmin would become libm calls and block vectorization).
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline float fast_expf(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;
  const float magic = 12582912.f;  // 1.5 * 2^23: round-to-nearest trick
  const float fn = (x * 1.44269504088896341f + magic) - magic;
  float r = x - fn * 0.693359375f;
  r = r + fn * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(fn) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

#if defined(__GNUC__) && defined(__x86_64__)
#define ONNXFUSE_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))  // runtime dispatch
#else
#define ONNXFUSE_CLONES
#endif

// h[j] = act(g[j] + bg[j]) * (u[j] + bu[j]) for one row of length dff, written into g (u is scratch too)
ONNXFUSE_CLONES
static void gate_row(float* __restrict g, float* __restrict u, const float* bg, const float* bu,
                     int64_t dff, Act act) {
  if (bg) for (int64_t j = 0; j < dff; ++j) g[j] += bg[j];
  if (bu) for (int64_t j = 0; j < dff; ++j) u[j] += bu[j];
  switch (act) {
    case Act::Silu:
      for (int64_t j = 0; j < dff; ++j) g[j] = g[j] * u[j] / (1.f + fast_expf(-g[j]));
      break;
    case Act::Gelu:  // exact erf form (scalar libm erf, not vectorized)
      for (int64_t j = 0; j < dff; ++j) g[j] = 0.5f * g[j] * (1.f + std::erf(g[j] * 0.70710678118654752f)) * u[j];
      break;
    case Act::GeluTanh: {  // 0.5*(1+tanh(t)) == 1/(1+exp(-2t))
      for (int64_t j = 0; j < dff; ++j) {
        const float a = g[j];
        const float t2 = 1.5957691216057308f * (a + 0.044715f * a * a * a);
        g[j] = a * u[j] / (1.f + fast_expf(-t2));
      }
      break;
    }
  }
}

// ---- allocator-backed scratch buffer -------------------------------------
struct Scratch {
  OrtAllocator* alloc = nullptr;
  void* p = nullptr;
  Scratch(OrtAllocator* a, size_t bytes) : alloc(a), p(a->Alloc(a, bytes)) {
    if (!p) throw Ort::Exception("onnxfuse: allocation failed", ORT_FAIL);
  }
  ~Scratch() { if (p) alloc->Free(alloc, p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* f() const { return static_cast<float*>(p); }
};
struct AllocatorGuard {
  OrtAllocator* a;
  ~AllocatorGuard() { if (a) Ort::GetApi().ReleaseAllocator(a); }
};

template <typename T>
void to_float(const T* src, float* dst, size_t n) { for (size_t i = 0; i < n; ++i) dst[i] = to_f<T>(src[i]); }

// ---- kernel -----------------------------------------------------------------
template <typename T>
struct FusedGatedMLPKernel {
  Act act_ = Act::Silu;
  Config cfg_;
  Ort::Op matmul_{nullptr};

  FusedGatedMLPKernel(const OrtKernelInfo* info, const Config& cfg) : cfg_(cfg) {
    Ort::ConstKernelInfo ki(info);
    std::string a = "silu";
    char buf[64];
    size_t sz = sizeof(buf);
    if (OrtStatus* st = Ort::GetApi().KernelInfoGetAttribute_string(info, "activation", buf, &sz)) {
      Ort::GetApi().ReleaseStatus(st);  // attribute absent -> default silu
    } else {
      a.assign(buf);
    }
    if (a == "silu") act_ = Act::Silu;
    else if (a == "gelu") act_ = Act::Gelu;
    else if (a == "gelu_tanh") act_ = Act::GeluTanh;
    else throw Ort::Exception("onnxfuse::FusedGatedMLP: unknown activation '" + a + "'", ORT_INVALID_ARGUMENT);

    if (cfg_.impl == Impl::MatMul) {
      const char* tc_names[] = {"T"};
      ONNXTensorElementDataType tc_vals[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
      matmul_ = Ort::Op::Create(info, "MatMul", "", 13, tc_names, tc_vals, 1, nullptr, 0, 2, 1);
    }
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const size_t nin = ctx.GetInputCount();
    auto X = ctx.GetInput(0), Wg = ctx.GetInput(1), Wu = ctx.GetInput(2), Wd = ctx.GetInput(3);
    Ort::ConstValue Bg{nullptr}, Bu{nullptr}, Bd{nullptr};
    if (nin > 4) Bg = ctx.GetInput(4);
    if (nin > 5) Bu = ctx.GetInput(5);
    if (nin > 6) Bd = ctx.GetInput(6);

    const std::vector<int64_t> xshape = X.GetTensorTypeAndShapeInfo().GetShape();
    const std::vector<int64_t> wshape = Wg.GetTensorTypeAndShapeInfo().GetShape();
    if (xshape.empty() || wshape.size() != 2)
      throw Ort::Exception("onnxfuse::FusedGatedMLP: X must be [...,d], weights 2-D", ORT_INVALID_ARGUMENT);
    const int64_t d = xshape.back(), dff = wshape[1];
    if (wshape[0] != d)
      throw Ort::Exception("onnxfuse::FusedGatedMLP: W_gate must be [d, dff]", ORT_INVALID_ARGUMENT);
    int64_t n = 1;
    for (size_t i = 0; i + 1 < xshape.size(); ++i) n *= xshape[i];

    auto Y = ctx.GetOutput(0, xshape);
    T* y = Y.GetTensorMutableData<T>();
    if (n == 0) return;

    Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault);
    AllocatorGuard ag{ctx.GetAllocator(*cpu)};
    OrtAllocator* alloc = ag.a;

    // float views of all inputs (no copy for float)
    std::vector<std::unique_ptr<Scratch>> keep;
    auto fview = [&](const Ort::ConstValue& v) -> const float* {
      if (!v) return nullptr;
      const T* p = v.GetTensorData<T>();
      if constexpr (std::is_same_v<T, float>) return p;
      size_t cnt = v.GetTensorTypeAndShapeInfo().GetElementCount();
      keep.emplace_back(new Scratch(alloc, cnt * sizeof(float)));
      to_float<T>(p, keep.back()->f(), cnt);
      return keep.back()->f();
    };
    const float *x = fview(X), *wg = fview(Wg), *wu = fview(Wu), *wd = fview(Wd);
    const float *bg = fview(Bg), *bu = fview(Bu), *bd = fview(Bd);

    float* yf = nullptr;
    std::unique_ptr<Scratch> yscratch;
    if constexpr (std::is_same_v<T, float>) yf = y;
    else { yscratch.reset(new Scratch(alloc, size_t(n * d) * sizeof(float))); yf = yscratch->f(); }

    Scratch G(alloc, size_t(n * dff) * sizeof(float));
    Scratch U(alloc, size_t(n * dff) * sizeof(float));

    if (cfg_.impl == Impl::Naive) {
      naive(x, wg, wu, wd, G.f(), U.f(), yf, n, d, dff);
      for (int64_t i = 0; i < n; ++i) gate_row(G.f() + i * dff, U.f() + i * dff, bg, bu, dff, act_);
      naive_gemm(G.f(), wd, yf, n, dff, d);
    } else {
      const int64_t s2[2] = {n, d}, sw[2] = {d, dff}, sd[2] = {dff, d}, sh[2] = {n, dff};
      auto mk = [&](const float* p, const int64_t* shp) {
        return Ort::Value::CreateTensor<float>(cpu, const_cast<float*>(p), size_t(shp[0] * shp[1]), shp, 2);
      };
      Ort::Value vx = mk(x, s2), vwg = mk(wg, sw), vwu = mk(wu, sw), vwd = mk(wd, sd);
      Ort::Value vg = mk(G.f(), sh), vu = mk(U.f(), sh), vy = mk(yf, s2);
      {
        const OrtValue* in[2] = {vx, vwg};
        OrtValue* out[1] = {vg};
        matmul_.Invoke(context, in, 2, out, 1);
      }
      {
        const OrtValue* in[2] = {vx, vwu};
        OrtValue* out[1] = {vu};
        matmul_.Invoke(context, in, 2, out, 1);
      }
      struct Job { float* g; float* u; const float *bg, *bu; int64_t n, dff; Act act; } job{G.f(), U.f(), bg, bu, n, dff, act_};
      const int64_t rows_per_task = 16;
      const size_t tasks = size_t((n + rows_per_task - 1) / rows_per_task);
      ctx.ParallelFor([](void* ud, size_t t) {
        auto* j = static_cast<Job*>(ud);
        int64_t r0 = int64_t(t) * rows_per_task, r1 = std::min(j->n, r0 + rows_per_task);
        for (int64_t r = r0; r < r1; ++r) gate_row(j->g + r * j->dff, j->u + r * j->dff, j->bg, j->bu, j->dff, j->act);
      }, tasks, 0, &job);
      {
        const OrtValue* in[2] = {vg, vwd};
        OrtValue* out[1] = {vy};
        matmul_.Invoke(context, in, 2, out, 1);
      }
    }

    const float off = cfg_.debug_offset;
    if (bd || off != 0.f)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < d; ++j) yf[i * d + j] += (bd ? bd[j] : 0.f) + off;
    if constexpr (!std::is_same_v<T, float>)
      for (int64_t i = 0; i < n * d; ++i) y[i] = from_f<T>(yf[i]);
  }

  static void naive_gemm(const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t nn) {
    std::fill(c, c + m * nn, 0.f);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t p = 0; p < k; ++p) {
        const float av = a[i * k + p];
        for (int64_t j = 0; j < nn; ++j) c[i * nn + j] += av * b[p * nn + j];
      }
  }
  static void naive(const float* x, const float* wg, const float* wu, const float*, float* g, float* u, float*,
                    int64_t n, int64_t d, int64_t dff) {
    naive_gemm(x, wg, g, n, d, dff);
    naive_gemm(x, wu, u, n, d, dff);
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Compute(context);
      return nullptr;
    } catch (const Ort::Exception& e) {
      return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::exception& e) {
      return Ort::GetApi().CreateStatus(ORT_RUNTIME_EXCEPTION, e.what());
    }
  }
};

// ---- op schema (one instance per element type; ORT merges same-name ops into one schema) ----
template <typename T>
struct FusedGatedMLPOp : Ort::CustomOpBase<FusedGatedMLPOp<T>, FusedGatedMLPKernel<T>, /*WithStatus=*/true> {
  Config cfg;
  explicit FusedGatedMLPOp(const Config& c) : cfg(c) {}

  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new FusedGatedMLPKernel<T>(info, cfg);
      return nullptr;
    } catch (const Ort::Exception& e) {
      return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::exception& e) {
      return Ort::GetApi().CreateStatus(ORT_RUNTIME_EXCEPTION, e.what());
    }
  }
  const char* GetName() const { return "FusedGatedMLP"; }
  const char* GetExecutionProviderType() const { return cfg.ep.c_str(); }
  size_t GetInputTypeCount() const { return 7; }
  ONNXTensorElementDataType GetInputType(size_t) const { return elem_type<T>(); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i < 4 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return elem_type<T>(); }
};

struct Registration {
  Config cfg;
  FusedGatedMLPOp<float> f32{cfg};
  FusedGatedMLPOp<Ort::Float16_t> f16{cfg};
  FusedGatedMLPOp<Ort::BFloat16_t> bf16{cfg};
  OrtCustomOpDomain* domain = nullptr;
  explicit Registration(const Config& c) : cfg(c), f32(c), f16(c), bf16(c) {}
};

// Ops and domains must outlive every session that uses them: keep them for the library's lifetime.
std::mutex g_mu;
std::vector<std::unique_ptr<Registration>> g_regs;

std::string config_entry(const OrtSessionOptions* so, const char* key) {
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

}  // namespace

extern "C" __attribute__((visibility("default")))
OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(kApiVersion);
  if (!api) return nullptr;  // cannot even create a status without an API table; ORT < 1.21
  Ort::InitApi(api);
  Config cfg;
  std::string impl = config_entry(options, "onnxfuse.cpu_kernel");
  if (impl == "naive") cfg.impl = Impl::Naive;
  else if (impl == "off") cfg.impl = Impl::Off;
  else if (!impl.empty() && impl != "matmul")
    return api->CreateStatus(ORT_INVALID_ARGUMENT, ("onnxfuse.cpu_kernel: unknown value " + impl).c_str());
  std::string off = config_entry(options, "onnxfuse.debug_offset");
  if (!off.empty()) cfg.debug_offset = std::stof(off);
  std::string ep = config_entry(options, "onnxfuse.debug_ep");
  if (!ep.empty()) cfg.ep = ep;
  if (cfg.impl == Impl::Off && ep.empty()) return nullptr;  // CPU: leave nodes to their function body
  if (cfg.impl == Impl::Off) cfg.impl = Impl::MatMul;

  std::lock_guard<std::mutex> lk(g_mu);
  auto reg = std::make_unique<Registration>(cfg);
  if (OrtStatus* st = api->CreateCustomOpDomain("onnxfuse", &reg->domain)) return st;
  for (OrtCustomOp* op : {static_cast<OrtCustomOp*>(&reg->f32), static_cast<OrtCustomOp*>(&reg->f16),
                          static_cast<OrtCustomOp*>(&reg->bf16)})
    if (OrtStatus* st = api->CustomOpDomain_Add(reg->domain, op)) return st;
  if (OrtStatus* st = api->AddCustomOpDomain(options, reg->domain)) return st;
  g_regs.push_back(std::move(reg));
  return nullptr;
}
