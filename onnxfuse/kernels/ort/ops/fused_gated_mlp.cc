// onnxfuse::FusedGatedMLP (onnxfuse/ops.py: FUSED_GATED_MLP), CPU kernels and the triton backend.
//   Y = act(X @ W_gate + B_gate) * (X @ W_up + B_up) @ W_down + B_down
// The op's name, inputs (and which are optional), activation values and element types come from
// onnxfuse_ops.h; this file implements each activation by name and the input slots' meaning.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "plugin.h"

namespace onnxfuse {
namespace {

namespace spec = onnxfuse_ops;
constexpr const char* kOp = spec::kFusedGatedMLP_Name;
constexpr const char* const* kInputs = spec::kFusedGatedMLP_Inputs;
static_assert(spec::kFusedGatedMLP_NumOutputs == 1, "FusedGatedMLP has one output");
static_assert(spec::kFusedGatedMLP_NumAttributes == 1, "FusedGatedMLP's only attribute is activation");

enum class Act { Silu, Gelu, GeluTanh };

// The activation a registry value names: every value of the registry needs a case here.
Act ActivationOf(const std::string& name) {
  if (name == "silu") return Act::Silu;
  if (name == "gelu") return Act::Gelu;
  if (name == "gelu_tanh") return Act::GeluTanh;
  throw Ort::Exception(std::string("onnxfuse::") + kOp + ": activation '" + name +
                       "' is in the registry but this plugin has no kernel for it: rebuild the plugin",
                       ORT_NOT_IMPLEMENTED);
}

// ---- element conversions -------------------------------------------------
template <typename T> inline float to_f(T v) { return v.ToFloat(); }
template <> inline float to_f<float>(float v) { return v; }
template <typename T> inline T from_f(float v) { return T(v); }
template <> inline float from_f<float>(float v) { return v; }


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
template <int32_t ElemType>
struct FusedGatedMLPKernel {
  using T = typename CppType<ElemType>::type;
  int32_t act_code_ = spec::kFusedGatedMLP_activation_Default;
  Act act_ = Act::Silu;
  Config cfg_;
  Ort::Op matmul_{nullptr};

  FusedGatedMLPKernel(const OrtKernelInfo* info, const Config& cfg) : cfg_(cfg) {
    std::string a = spec::kFusedGatedMLP_activation_Values[spec::kFusedGatedMLP_activation_Default];
    char buf[64];
    size_t sz = sizeof(buf);
    if (OrtStatus* st = Ort::GetApi().KernelInfoGetAttribute_string(info, spec::kFusedGatedMLP_activation_Name,
                                                                    buf, &sz)) {
      Ort::GetApi().ReleaseStatus(st);  // attribute absent (or too long to be a value): the default
    } else {
      a.assign(buf);
    }
    act_code_ = IndexOf(spec::kFusedGatedMLP_activation_Values, spec::kFusedGatedMLP_activation_Count, a);
    if (act_code_ < 0) {
      std::string known;
      for (const char* v : spec::kFusedGatedMLP_activation_Values) known += (known.empty() ? "" : ", ") + std::string(v);
      throw Ort::Exception(std::string("onnxfuse::") + kOp + ": unknown activation '" + a + "' (" + known + ")",
                           ORT_INVALID_ARGUMENT);
    }
    act_ = ActivationOf(a);

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
      throw Ort::Exception(std::string("onnxfuse::") + kOp + ": " + kInputs[0] + " must be [..., d] and " +
                           kInputs[1] + " [d, d_ff], got " + kInputs[0] + " of rank " + std::to_string(xshape.size()) +
                           ", " + kInputs[1] + " of rank " + std::to_string(wshape.size()), ORT_INVALID_ARGUMENT);
    const int64_t d = xshape.back(), dff = wshape[1];
    if (wshape[0] != d)
      throw Ort::Exception(std::string("onnxfuse::") + kOp + ": " + kInputs[1] + " is " + FormatShape(wshape) +
                           " but " + kInputs[0] + "'s last dim is " + std::to_string(d), ORT_INVALID_ARGUMENT);
    ExpectShape(Wu, 2, {d, dff});
    ExpectShape(Wd, 3, {dff, d});
    if ((Bg || Bu || Bd) && !(Bg && Bu && Bd))
      throw Ort::Exception(std::string("onnxfuse::") + kOp + ": give all three biases or none", ORT_INVALID_ARGUMENT);
    if (Bg) { ExpectShape(Bg, 4, {dff}); ExpectShape(Bu, 5, {dff}); ExpectShape(Bd, 6, {d}); }
    int64_t n = 1;
    for (size_t i = 0; i + 1 < xshape.size(); ++i) n *= xshape[i];

    auto Y = ctx.GetOutput(0, xshape);
    T* y = Y.GetTensorMutableData<T>();
    CountRun(cfg_.impl);
    if (cfg_.impl == Impl::Triton) {
      if (n != 0) CallTriton(ctx, {&X, &Wg, &Wu, &Wd, &Bg, &Bu, &Bd}, xshape, y);
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
      NaiveGemm(x, wg, G.f(), n, d, dff);
      NaiveGemm(x, wu, U.f(), n, d, dff);
      for (int64_t i = 0; i < n; ++i) gate_row(G.f() + i * dff, U.f() + i * dff, bg, bu, dff, act_);
      NaiveGemm(G.f(), wd, yf, n, dff, d);
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

  static void ExpectShape(const Ort::ConstValue& v, int slot, const std::vector<int64_t>& want) {
    const std::vector<int64_t> got = v.GetTensorTypeAndShapeInfo().GetShape();
    if (got == want) return;
    throw Ort::Exception(std::string("onnxfuse::") + kOp + ": " + kInputs[slot] + " is " + FormatShape(got) +
                         ", expected " + FormatShape(want), ORT_INVALID_ARGUMENT);
  }

  // The triton backend: hand ORT's buffers to the op's Python kernel (no copy).
  void CallTriton(Ort::KernelContext& ctx, std::initializer_list<const Ort::ConstValue*> ins,
                  const std::vector<int64_t>& yshape, T* y) {
    auto call = std::make_unique<OnnxfuseCall>();
    std::memset(call.get(), 0, sizeof(OnnxfuseCall));
    call->op_id = spec::kFusedGatedMLP_Id;
    call->elem_type = ElemType;
    call->num_inputs = int32_t(ins.size());
    call->num_outputs = 1;
    call->num_attributes = spec::kFusedGatedMLP_NumAttributes;
    call->attributes[0] = act_code_;
    size_t i = 0;
    for (const Ort::ConstValue* v : ins) {
      if (*v) FillTensor(call->inputs[i], v->GetTensorRawData(), v->GetTensorTypeAndShapeInfo().GetShape(), kOp);
      ++i;
    }
    FillTensor(call->outputs[0], y, yshape, kOp);
    CallPython(*call, cfg_, ctx, kOp);
  }

  static void NaiveGemm(const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t nn) {
    std::fill(c, c + m * nn, 0.f);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t p = 0; p < k; ++p) {
        const float av = a[i * k + p];
        for (int64_t j = 0; j < nn; ++j) c[i * nn + j] += av * b[p * nn + j];
      }
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
template <int32_t ElemType>
struct FusedGatedMLPOp : Ort::CustomOpBase<FusedGatedMLPOp<ElemType>, FusedGatedMLPKernel<ElemType>, /*WithStatus=*/true> {
  Config cfg;
  explicit FusedGatedMLPOp(const Config& c) : cfg(c) {}

  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new FusedGatedMLPKernel<ElemType>(info, cfg);
      return nullptr;
    } catch (const Ort::Exception& e) {
      return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::exception& e) {
      return Ort::GetApi().CreateStatus(ORT_RUNTIME_EXCEPTION, e.what());
    }
  }
  const char* GetName() const { return kOp; }
  const char* GetExecutionProviderType() const { return cfg.ExecutionProvider(); }
  size_t GetInputTypeCount() const { return spec::kFusedGatedMLP_NumInputs; }
  ONNXTensorElementDataType GetInputType(size_t) const { return static_cast<ONNXTensorElementDataType>(ElemType); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i < size_t(spec::kFusedGatedMLP_RequiredInputs) ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return spec::kFusedGatedMLP_NumOutputs; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return static_cast<ONNXTensorElementDataType>(ElemType); }
};

}  // namespace

void AddOps_FusedGatedMLP(const Config& cfg, OpList& ops) {
#define ONNXFUSE_ADD(type) ops.push_back(std::make_shared<FusedGatedMLPOp<spec::kElementType_##type>>(cfg));
  ONNXFUSE_FusedGatedMLP_FOR_EACH_ELEMENT_TYPE(ONNXFUSE_ADD)
#undef ONNXFUSE_ADD
}

}  // namespace onnxfuse
