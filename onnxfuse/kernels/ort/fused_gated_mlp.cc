// onnxfuse ORT custom-op library: registers onnxfuse::FusedGatedMLP (CPU or CUDA EP; float, float16, bfloat16).
//   Y = act(X @ W_gate + B_gate) * (X @ W_up + B_up) @ W_down + B_down
// Inputs: X[..., d], W_gate[d,dff], W_up[d,dff], W_down[dff,d], optional B_gate[dff], B_up[dff], B_down[d]
// Attribute: activation = "silu" (default) | "gelu" | "gelu_tanh"
// Session config entries read by RegisterCustomOps (per session):
//   onnxfuse.cpu_kernel   = "matmul" (ORT's own MatMul via Ort::Op) | "naive" (reference loops)
//                         | "off" (register nothing: CPU nodes run their model-local function body)
//   onnxfuse.debug_offset = float added to every output element (debug only; proves the kernel ran)
//   onnxfuse.backend      = "default" | "triton" (call the Python bridge: onnxfuse.kernels.bridge)
//   onnxfuse.device       = "cpu" (default) | "cuda" (register for the CUDA EP; the triton backend)
//   onnxfuse.precision    = "tf32" (default) | "ieee": float32 dot precision handed to the triton backend
//   onnxfuse.debug_ep     = EP name to register the kernels for instead of CPUExecutionProvider (debug only)
//
// The triton bridge (no Python headers needed): Python hands the library a C callback through
// onnxfuse_set_triton_callback (ctypes.CFUNCTYPE; ctypes takes the GIL when ORT's thread calls it).
// The kernel fills an OnnxfuseCall with ORT's own buffers (no copy), the element type, the
// activation and, on CUDA, ORT's compute stream; a non-zero return plus the message the callback
// wrote into call->error becomes an ORT error (the run fails, the process and the session survive).
// The CUDA kernels need no CUDA headers or driver: they only pass device pointers and the stream.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <atomic>
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


// ---- the triton bridge's C ABI (mirrored by onnxfuse/kernels/bridge.py; bump the version on change) ----
extern "C" {
#define ONNXFUSE_BRIDGE_VERSION 1
#define ONNXFUSE_MAX_DIMS 8
typedef struct {
  void* data;  // NULL for an absent optional input
  int64_t ndim;
  int64_t shape[ONNXFUSE_MAX_DIMS];
} OnnxfuseTensor;

typedef struct {
  int32_t version;     // ONNXFUSE_BRIDGE_VERSION
  int32_t elem_type;   // ONNX TensorProto element type: 1 float, 10 float16, 16 bfloat16
  int32_t activation;  // 0 silu, 1 gelu, 2 gelu_tanh
  int32_t device;      // 0 cpu, 1 cuda
  int32_t device_id;
  int32_t precision;   // 0 tf32, 1 ieee
  void* stream;        // ORT's compute stream (cudaStream_t) on CUDA, else NULL
  OnnxfuseTensor inputs[7];  // X, W_gate, W_up, W_down, B_gate, B_up, B_down
  OnnxfuseTensor output;
  char error[1024];    // NUL-terminated message the callback writes when it returns non-zero
} OnnxfuseCall;

typedef int (*OnnxfuseTritonFn)(OnnxfuseCall*);
}

namespace {
std::atomic<OnnxfuseTritonFn> g_triton{nullptr};
}

// Install (or, with NULL, remove) the triton backend's callback; returns the bridge version.
extern "C" __attribute__((visibility("default"))) int onnxfuse_set_triton_callback(OnnxfuseTritonFn fn) {
  g_triton.store(fn);
  return ONNXFUSE_BRIDGE_VERSION;
}

// sizeof(OnnxfuseCall): Python checks its mirror of the struct against it.
extern "C" __attribute__((visibility("default"))) int64_t onnxfuse_bridge_call_size() {
  return int64_t(sizeof(OnnxfuseCall));
}

// Number of FusedGatedMLP kernel runs per implementation since load (tests: which kernel ran).
namespace {
std::atomic<int64_t> g_runs[4];
}
extern "C" __attribute__((visibility("default"))) int64_t onnxfuse_kernel_runs(int impl) {
  return impl >= 0 && impl < 4 ? g_runs[impl].load() : -1;
}

namespace {

enum class Act { Silu, Gelu, GeluTanh };
enum class Impl { MatMul, Naive, Off, Triton };

struct Config {
  Impl impl = Impl::MatMul;
  bool cuda = false;
  int32_t precision = 0;  // 0 tf32, 1 ieee (triton backend, float32)
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
      throw Ort::Exception("onnxfuse::FusedGatedMLP: X must be [..., d] and W_gate [d, d_ff], got X of rank " +
                           std::to_string(xshape.size()) + ", W_gate of rank " + std::to_string(wshape.size()),
                           ORT_INVALID_ARGUMENT);
    const int64_t d = xshape.back(), dff = wshape[1];
    if (wshape[0] != d)
      throw Ort::Exception("onnxfuse::FusedGatedMLP: W_gate is [" + std::to_string(wshape[0]) + ", " +
                           std::to_string(dff) + "] but X's last dim is " + std::to_string(d), ORT_INVALID_ARGUMENT);
    expect_shape(Wu, "W_up", {d, dff});
    expect_shape(Wd, "W_down", {dff, d});
    if ((Bg || Bu || Bd) && !(Bg && Bu && Bd))
      throw Ort::Exception("onnxfuse::FusedGatedMLP: give all three biases or none", ORT_INVALID_ARGUMENT);
    if (Bg) { expect_shape(Bg, "B_gate", {dff}); expect_shape(Bu, "B_up", {dff}); expect_shape(Bd, "B_down", {d}); }
    int64_t n = 1;
    for (size_t i = 0; i + 1 < xshape.size(); ++i) n *= xshape[i];

    auto Y = ctx.GetOutput(0, xshape);
    T* y = Y.GetTensorMutableData<T>();
    g_runs[static_cast<int>(cfg_.impl)].fetch_add(1);
    if (cfg_.impl == Impl::Triton) {
      if (n != 0) call_triton(ctx, {&X, &Wg, &Wu, &Wd, &Bg, &Bu, &Bd}, xshape, y);
      return;
    }
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


  static void expect_shape(const Ort::ConstValue& v, const char* name, std::vector<int64_t> want) {
    const std::vector<int64_t> got = v.GetTensorTypeAndShapeInfo().GetShape();
    if (got == want) return;
    auto fmt = [](const std::vector<int64_t>& s) {
      std::string r = "[";
      for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
      return r + "]";
    };
    throw Ort::Exception(std::string("onnxfuse::FusedGatedMLP: ") + name + " is " + fmt(got) + ", expected " +
                         fmt(want), ORT_INVALID_ARGUMENT);
  }

  // The triton backend: hand ORT's buffers to the Python callback (no copy).
  void call_triton(Ort::KernelContext& ctx, std::initializer_list<const Ort::ConstValue*> ins,
                   const std::vector<int64_t>& yshape, T* y) {
    OnnxfuseTritonFn fn = g_triton.load();
    if (!fn)
      throw Ort::Exception("onnxfuse::FusedGatedMLP: the triton backend has no Python kernel installed: "
                           "create the session with onnxfuse.kernels.ortlib.session_options(backend='triton')",
                           ORT_FAIL);
    auto call = std::make_unique<OnnxfuseCall>();
    std::memset(call.get(), 0, sizeof(OnnxfuseCall));
    call->version = ONNXFUSE_BRIDGE_VERSION;
    call->elem_type = elem_type<T>();
    call->activation = static_cast<int32_t>(act_);
    call->device = cfg_.cuda ? 1 : 0;
    call->precision = cfg_.precision;
    auto fill = [](OnnxfuseTensor& t, const void* data, const std::vector<int64_t>& shape) {
      if (shape.size() > ONNXFUSE_MAX_DIMS)
        throw Ort::Exception("onnxfuse::FusedGatedMLP: more than 8 dims", ORT_INVALID_ARGUMENT);
      t.data = const_cast<void*>(data);
      t.ndim = int64_t(shape.size());
      std::copy(shape.begin(), shape.end(), t.shape);
    };
    size_t i = 0;
    for (const Ort::ConstValue* v : ins) {
      if (*v) fill(call->inputs[i], v->GetTensorRawData(), v->GetTensorTypeAndShapeInfo().GetShape());
      ++i;
    }
    fill(call->output, y, yshape);
    if (cfg_.cuda) {
      call->stream = ctx.GetGPUComputeStream();
      call->device_id = (*ins.begin())->GetTensorMemoryInfo().GetDeviceId();
    }
    if (fn(call.get()) != 0) {
      call->error[sizeof(call->error) - 1] = '\0';
      throw Ort::Exception(std::string("onnxfuse::FusedGatedMLP (triton backend): ") +
                           (call->error[0] ? call->error : "the Python kernel failed"), ORT_RUNTIME_EXCEPTION);
    }
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
  if (!off.empty()) {
    try { cfg.debug_offset = std::stof(off); } catch (const std::exception&) {
      return api->CreateStatus(ORT_INVALID_ARGUMENT, ("onnxfuse.debug_offset: not a number: " + off).c_str());
    }
  }
  const std::string backend = config_entry(options, "onnxfuse.backend");
  if (backend == "triton") cfg.impl = Impl::Triton;
  else if (!backend.empty() && backend != "default")
    return api->CreateStatus(ORT_INVALID_ARGUMENT, ("onnxfuse.backend: unknown value " + backend +
                                                    " (default or triton)").c_str());
  const std::string device = config_entry(options, "onnxfuse.device");
  if (device == "cuda") {
    cfg.cuda = true;
    cfg.ep = "CUDAExecutionProvider";
    cfg.impl = Impl::Triton;  // on CUDA both backends launch the Triton kernel (no native CUDA kernel yet)
  } else if (!device.empty() && device != "cpu") {
    return api->CreateStatus(ORT_INVALID_ARGUMENT, ("onnxfuse.device: unknown value " + device + " (cpu or cuda)").c_str());
  }
  const std::string precision = config_entry(options, "onnxfuse.precision");
  if (precision == "ieee") cfg.precision = 1;
  else if (!precision.empty() && precision != "tf32")
    return api->CreateStatus(ORT_INVALID_ARGUMENT, ("onnxfuse.precision: unknown value " + precision + " (tf32 or ieee)").c_str());
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
