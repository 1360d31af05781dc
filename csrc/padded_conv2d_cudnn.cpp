// padded_conv2d through cuDNN's graph (backend) API: a convolution descriptor with
// CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS = (top, left) and POST_PADDINGS = (bottom, right), so that
// forward, backward-data and backward-filter each run as one cuDNN engine on the unpadded
// tensors and produce exactly the requested sizes.
//
// cuDNN itself is the library torch already loaded (found with dlopen(RTLD_NOLOAD) and dlsym),
// so the extension needs cudnn.h at build time but no link-time dependency on a particular
// libcudnn. The handle is torch's (per thread and device). Execution plans are built once per
// (shapes, layout, dtype, alignment, flags) and cached per thread, like ATen's own cuDNN plans.
//
// Engine choice follows ATen's cuDNN convolutions: heuristics mode A (then the fallback list),
// skipping engines that down-convert inputs, TF32 tensor-core engines for fp32 unless
// torch.backends.cudnn.allow_tf32, and non-deterministic engines when determinism is requested;
// with torch.backends.cudnn.benchmark the candidate plans are timed on first use.
#ifdef VQVAE_FAST_WITH_CUDA

#include "padded_conv2d_cudnn.h"

#if __has_include(<cudnn.h>)
#define VQVAE_FAST_HAVE_CUDNN 1
#endif

#ifdef VQVAE_FAST_HAVE_CUDNN
#include <ATen/Context.h>
#include <ATen/Functions.h>
#include <ATen/cudnn/Handle.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>
#endif

namespace vqvae_fast::cudnn_graph {

#ifndef VQVAE_FAST_HAVE_CUDNN

bool compiled() { return false; }

namespace {
[[noreturn]] void not_built() {
  throw Unsupported("the extension was built without cuDNN headers (cudnn.h not found)");
}
}  // namespace

at::Tensor forward(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                   const ConvGeometry&) {
  not_built();
}
at::Tensor backward_data(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const ConvGeometry&) {
  not_built();
}
at::Tensor backward_filter(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const ConvGeometry&) {
  not_built();
}

#else  // VQVAE_FAST_HAVE_CUDNN

bool compiled() { return true; }

namespace {

// ---------------------------------------------------------------------------------------------
// The cuDNN functions, from the libcudnn torch loaded.

struct Api {
  decltype(&cudnnBackendCreateDescriptor) create = nullptr;
  decltype(&cudnnBackendDestroyDescriptor) destroy = nullptr;
  decltype(&cudnnBackendSetAttribute) set = nullptr;
  decltype(&cudnnBackendGetAttribute) get = nullptr;
  decltype(&cudnnBackendFinalize) finalize = nullptr;
  decltype(&cudnnBackendExecute) execute = nullptr;
  decltype(&cudnnGetErrorString) error_string = nullptr;
  decltype(&cudnnSetStream) set_stream = nullptr;
  std::string missing;  // empty when every function was found
};

const Api& api() {
  static const Api table = [] {
    Api a;
    const std::string name = "libcudnn.so." + std::to_string(CUDNN_MAJOR);
    void* lib = dlopen(name.c_str(), RTLD_LAZY | RTLD_NOLOAD);
    if (lib == nullptr) lib = dlopen(name.c_str(), RTLD_LAZY | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* err = dlerror();
      a.missing = name + " could not be opened (" + (err ? err : "unknown error") + ")";
      return a;
    }
    auto load = [&](auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::decay_t<decltype(fn)>>(dlsym(lib, symbol));
      if (fn == nullptr && a.missing.empty()) a.missing = name + " has no symbol " + symbol;
    };
    load(a.create, "cudnnBackendCreateDescriptor");
    load(a.destroy, "cudnnBackendDestroyDescriptor");
    load(a.set, "cudnnBackendSetAttribute");
    load(a.get, "cudnnBackendGetAttribute");
    load(a.finalize, "cudnnBackendFinalize");
    load(a.execute, "cudnnBackendExecute");
    load(a.error_string, "cudnnGetErrorString");
    load(a.set_stream, "cudnnSetStream");
    return a;
  }();
  if (!table.missing.empty()) throw Unsupported(table.missing);
  return table;
}

void check(cudnnStatus_t status, const char* what) {
  if (status != CUDNN_STATUS_SUCCESS) {
    throw Unsupported(std::string("cuDNN ") + what + " failed: " + api().error_string(status));
  }
}

// Owns one backend descriptor.
class Desc {
 public:
  explicit Desc(cudnnBackendDescriptorType_t type) {
    check(api().create(type, &desc_), "cudnnBackendCreateDescriptor");
  }
  ~Desc() {
    if (desc_ != nullptr) api().destroy(desc_);
  }
  Desc(Desc&& other) noexcept : desc_(std::exchange(other.desc_, nullptr)) {}
  Desc& operator=(Desc&& other) noexcept {
    std::swap(desc_, other.desc_);
    return *this;
  }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;

  cudnnBackendDescriptor_t get() const { return desc_; }

  Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
            const void* values) {
    check(api().set(desc_, name, type, count, values), "cudnnBackendSetAttribute");
    return *this;
  }
  Desc& set_desc(cudnnBackendAttributeName_t name, const Desc& value) {
    cudnnBackendDescriptor_t raw = value.get();
    return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
  }
  Desc& finalize() {
    check(api().finalize(desc_), "cudnnBackendFinalize");
    return *this;
  }

 private:
  cudnnBackendDescriptor_t desc_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Graph of one convolution direction.

enum class Kind : int64_t { kForward = 0, kBackwardData = 1, kBackwardFilter = 2 };

// The three tensors of a direction: input (x or dx), filter (w or dw), output (y or dy).
struct Operands {
  at::Tensor input, filter, output;
};

constexpr int64_t kInputUid = 1, kFilterUid = 2, kOutputUid = 3;

struct OpAttributes {
  cudnnBackendDescriptorType_t type;
  cudnnBackendAttributeName_t input, filter, output, conv, alpha, beta;
};

OpAttributes op_attributes(Kind kind) {
  switch (kind) {
    case Kind::kForward:
      return {CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
              CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA};
    case Kind::kBackwardData:
      return {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA};
    case Kind::kBackwardFilter:
      return {CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
              CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA};
  }
  throw Unsupported("unknown convolution direction");
}

cudnnDataType_t data_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return CUDNN_DATA_FLOAT;
    case at::kDouble: return CUDNN_DATA_DOUBLE;
    case at::kHalf: return CUDNN_DATA_HALF;
    case at::kBFloat16: return CUDNN_DATA_BFLOAT16;
    default: throw Unsupported("cuDNN path: unsupported dtype");
  }
}

// Largest power of two (<= 16 bytes) dividing the address: cuDNN engines may assume it.
int64_t alignment_of(const at::Tensor& t) {
  const auto address = reinterpret_cast<std::uintptr_t>(t.const_data_ptr());
  int64_t alignment = 16;
  while (alignment > t.element_size() && address % alignment != 0) alignment /= 2;
  return alignment;
}

// Packed strides of a 4-D tensor in `format` (the tensor is contiguous in it; size-1 dims may
// carry any stride in PyTorch, cuDNN wants the canonical one).
std::array<int64_t, 4> packed_strides(at::IntArrayRef sizes, at::MemoryFormat format) {
  std::array<int64_t, 4> s{};
  if (format == at::MemoryFormat::ChannelsLast) {  // memory order N, H, W, C
    s[1] = 1;
    s[3] = sizes[1];
    s[2] = sizes[3] * s[3];
    s[0] = sizes[2] * s[2];
  } else {  // N, C, H, W
    s[3] = 1;
    s[2] = sizes[3];
    s[1] = sizes[2] * s[2];
    s[0] = sizes[1] * s[1];
  }
  return s;
}

Desc tensor_desc(int64_t uid, const at::Tensor& t, at::MemoryFormat format) {
  const cudnnDataType_t dtype = data_type(t.scalar_type());
  const std::array<int64_t, 4> dims{t.size(0), t.size(1), t.size(2), t.size(3)};
  const std::array<int64_t, 4> strides = packed_strides(t.sizes(), format);
  const int64_t alignment = alignment_of(t);
  Desc d(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  d.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dtype)
      .set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims.data())
      .set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides.data())
      .set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid)
      .set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment)
      .finalize();
  return d;
}

// The operation graph and every descriptor it refers to (kept alive with the plan).
struct Graph {
  std::vector<Desc> parts;  // the three tensors, the convolution, the operation, the graph
  cudnnBackendDescriptor_t graph = nullptr;
};

// Tensors, convolution and operation descriptors, finalized (no handle needed yet).
Graph build_operation(Kind kind, const Operands& t, const ConvGeometry& g, at::MemoryFormat format) {
  Graph graph;
  const bool is_double = t.input.scalar_type() == at::kDouble;
  const cudnnDataType_t compute = is_double ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;

  graph.parts.push_back(tensor_desc(kInputUid, t.input, format));
  graph.parts.push_back(tensor_desc(kFilterUid, t.filter, format));
  graph.parts.push_back(tensor_desc(kOutputUid, t.output, format));

  const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
  const int64_t spatial_dims = 2;
  const int64_t dilations[2] = {1, 1};
  const int64_t strides[2] = {g.sH, g.sW};
  const int64_t pre[2] = {g.pad_top, g.pad_left};
  const int64_t post[2] = {g.pad_bottom, g.pad_right};
  Desc conv(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
  conv.set(CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute)
      .set(CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode)
      .set(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial_dims)
      .set(CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dilations)
      .set(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, strides)
      .set(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pre)
      .set(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, post)
      .finalize();

  const OpAttributes attrs = op_attributes(kind);
  Desc op(attrs.type);
  op.set_desc(attrs.input, graph.parts[0])
      .set_desc(attrs.filter, graph.parts[1])
      .set_desc(attrs.output, graph.parts[2])
      .set_desc(attrs.conv, conv);
  if (is_double) {
    const double alpha = 1.0, beta = 0.0;
    op.set(attrs.alpha, CUDNN_TYPE_DOUBLE, 1, &alpha).set(attrs.beta, CUDNN_TYPE_DOUBLE, 1, &beta);
  } else {
    const float alpha = 1.0f, beta = 0.0f;
    op.set(attrs.alpha, CUDNN_TYPE_FLOAT, 1, &alpha).set(attrs.beta, CUDNN_TYPE_FLOAT, 1, &beta);
  }
  op.finalize();
  graph.parts.push_back(std::move(conv));
  graph.parts.push_back(std::move(op));
  return graph;
}

Graph build_graph(Kind kind, const Operands& t, const ConvGeometry& g, at::MemoryFormat format,
                  cudnnHandle_t handle) {
  Graph graph = build_operation(kind, t, g, format);
  Desc op_graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  cudnnBackendDescriptor_t ops[1] = {graph.parts[4].get()};
  op_graph.set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, ops)
      .set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle)
      .finalize();
  graph.graph = op_graph.get();
  graph.parts.push_back(std::move(op_graph));
  return graph;
}

// ---------------------------------------------------------------------------------------------
// Engine configurations and execution plans.

// What the caller allows: mirrors ATen's filtering of cuDNN engine configurations.
struct EngineFilter {
  bool is_float32;
  bool allow_tf32;
  bool deterministic;
};

bool acceptable(cudnnBackendDescriptor_t config, const EngineFilter& filter) {
  Desc engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
  cudnnBackendDescriptor_t engine_raw = engine.get();
  int64_t count = 0;
  if (api().get(config, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &count,
                &engine_raw) != CUDNN_STATUS_SUCCESS) {
    return false;
  }
  cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
  int64_t num_notes = 0;
  if (api().get(engine_raw, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &num_notes, notes) != CUDNN_STATUS_SUCCESS) {
    return false;
  }
  for (int64_t i = 0; i < num_notes && i < CUDNN_NUMERICAL_NOTE_TYPE_COUNT; ++i) {
    if (notes[i] == CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS) return false;
    if (notes[i] == CUDNN_NUMERICAL_NOTE_TENSOR_CORE && filter.is_float32 && !filter.allow_tf32) {
      return false;
    }
    if (notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC && filter.deterministic) return false;
  }
  return true;
}

struct Plan {
  std::vector<Desc> keep_alive;  // graph parts and the engine configuration
  std::shared_ptr<Desc> plan;
  int64_t workspace = 0;
};

// Engine configurations suggested by one heuristics mode, best first.
std::vector<Desc> heuristic_configs(cudnnBackendDescriptor_t graph, cudnnBackendHeurMode_t mode) {
  Desc heuristics(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  heuristics.set(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph)
      .set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode)
      .finalize();
  int64_t count = 0;
  check(api().get(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                  0, &count, nullptr),
        "engine heuristics (count)");
  std::vector<Desc> configs;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < count; ++i) {
    configs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    raw.push_back(configs.back().get());
  }
  int64_t returned = 0;
  if (count > 0) {
    check(api().get(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                    count, &returned, raw.data()),
          "engine heuristics (results)");
  }
  configs.erase(configs.begin() + std::min(returned, count), configs.end());
  return configs;
}

// Up to max_plans finalized plans, in heuristic order (mode A, then the fallback list).
std::vector<Plan> candidate_plans(Graph& graph, cudnnHandle_t handle, const EngineFilter& filter,
                                  size_t max_plans) {
  std::vector<Plan> plans;
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    std::vector<Desc> configs;
    try {
      configs = heuristic_configs(graph.graph, mode);
    } catch (const Unsupported&) {
      continue;
    }
    for (Desc& config : configs) {
      if (plans.size() >= max_plans) break;
      if (!acceptable(config.get(), filter)) continue;
      auto plan = std::make_shared<Desc>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      cudnnBackendDescriptor_t config_raw = config.get();
      if (api().set(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle) !=
              CUDNN_STATUS_SUCCESS ||
          api().set(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &config_raw) != CUDNN_STATUS_SUCCESS ||
          api().finalize(plan->get()) != CUDNN_STATUS_SUCCESS) {
        continue;  // this engine does not support the graph (e.g. asymmetric padding)
      }
      int64_t workspace = 0, count = 0;
      if (api().get(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                    &count, &workspace) != CUDNN_STATUS_SUCCESS) {
        continue;
      }
      Plan p;
      p.keep_alive.push_back(std::move(config));
      p.plan = std::move(plan);
      p.workspace = workspace;
      plans.push_back(std::move(p));
    }
    if (!plans.empty()) break;
  }
  return plans;
}

void execute(const Plan& plan, cudnnHandle_t handle, const Operands& t) {
  at::Tensor workspace;
  void* workspace_ptr = nullptr;
  if (plan.workspace > 0) {
    workspace = at::empty({plan.workspace}, t.input.options().dtype(at::kByte));
    workspace_ptr = workspace.data_ptr();
  }
  const int64_t uids[3] = {kInputUid, kFilterUid, kOutputUid};
  void* pointers[3] = {t.input.data_ptr(), t.filter.data_ptr(), t.output.data_ptr()};
  Desc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, uids)
      .set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, pointers)
      .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace_ptr)
      .finalize();
  check(api().execute(handle, plan.plan->get(), pack.get()), "cudnnBackendExecute");
}

// Mean time of a few runs of each candidate (the first run of each is a warm-up).
size_t fastest_plan(const std::vector<Plan>& plans, cudnnHandle_t handle, const Operands& t) {
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess ||
      capture != cudaStreamCaptureStatusNone) {
    return 0;  // no timing inside a CUDA graph capture: take the heuristics' first choice
  }
  cudaEvent_t start = nullptr, stop = nullptr;
  if (cudaEventCreate(&start) != cudaSuccess || cudaEventCreate(&stop) != cudaSuccess) return 0;
  size_t best = 0;
  float best_ms = -1.0f;
  for (size_t i = 0; i < plans.size(); ++i) {
    try {
      execute(plans[i], handle, t);
      cudaEventRecord(start, stream);
      for (int run = 0; run < 3; ++run) execute(plans[i], handle, t);
      cudaEventRecord(stop, stream);
      float ms = 0.0f;
      if (cudaEventSynchronize(stop) != cudaSuccess ||
          cudaEventElapsedTime(&ms, start, stop) != cudaSuccess) {
        continue;
      }
      if (best_ms < 0.0f || ms < best_ms) {
        best_ms = ms;
        best = i;
      }
    } catch (const Unsupported&) {
      continue;
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  (void)cudaGetLastError();
  return best;
}

// torch.backends.cudnn.allow_tf32 (or cudnn.conv.fp32_precision), asked the way ATen's own
// convolutions ask. The accessor's signature changed across torch releases: no argument, then an
// op name string, then an op enum; the branch is chosen from the signature, and the enum type is
// taken from it (so that it is only named where it exists).
template <typename Method>
struct OptionalArgument {};
template <typename C, typename Op>
struct OptionalArgument<bool (C::*)(std::optional<Op>) const> {
  using type = Op;
};
// Whether OptionalArgument matched (C++17: torch <= 2.11 builds extensions without concepts).
template <typename T, typename = void>
struct HasType : std::false_type {};
template <typename T>
struct HasType<T, std::void_t<typename T::type>> : std::true_type {};

template <typename Context>
bool conv_tf32_allowed(const Context& context) {
  using Method = decltype(&Context::allowTF32CuDNN);
  if constexpr (std::is_same_v<Method, bool (Context::*)(const std::string&) const>) {
    return context.allowTF32CuDNN("conv");
  } else if constexpr (HasType<OptionalArgument<Method>>::value) {
    return context.allowTF32CuDNN(OptionalArgument<Method>::type::CONV);
  } else {
    return context.allowTF32CuDNN();
  }
}

bool tf32_allowed() { return conv_tf32_allowed(at::globalContext()); }

struct CacheEntry {
  std::shared_ptr<Plan> plan;  // null when cuDNN cannot run this configuration
  std::string error;
};

std::string cache_key(Kind kind, const Operands& t, const ConvGeometry& g,
                      at::MemoryFormat format, const EngineFilter& filter, bool benchmark) {
  std::vector<int64_t> v = {static_cast<int64_t>(kind),
                            static_cast<int64_t>(t.input.scalar_type()),
                            static_cast<int64_t>(t.input.get_device()),
                            static_cast<int64_t>(format),
                            g.sH, g.sW, g.pad_left, g.pad_right, g.pad_top, g.pad_bottom,
                            alignment_of(t.input), alignment_of(t.filter), alignment_of(t.output),
                            int64_t{filter.allow_tf32}, int64_t{filter.deterministic},
                            int64_t{benchmark}};
  for (const at::Tensor* tensor : {&t.input, &t.filter, &t.output}) {
    for (int64_t size : tensor->sizes()) v.push_back(size);
  }
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(int64_t));
}

// Runs one convolution direction on packed tensors in `format`.
void run(Kind kind, const Operands& t, const ConvGeometry& g, at::MemoryFormat format) {
  cudnnHandle_t handle = at::native::getCudnnHandle();
  check(api().set_stream(handle, c10::cuda::getCurrentCUDAStream().stream()), "cudnnSetStream");

  auto& context = at::globalContext();
  const EngineFilter filter{t.input.scalar_type() == at::kFloat, tf32_allowed(),
                            context.deterministicCuDNN() || context.deterministicAlgorithms()};
  const bool benchmark = context.benchmarkCuDNN();
  // Per thread, like torch's cuDNN handles; never destroyed (process exit order is unknown).
  thread_local auto* cache = new std::unordered_map<std::string, CacheEntry>();
  const std::string key = cache_key(kind, t, g, format, filter, benchmark);
  auto found = cache->find(key);
  if (found == cache->end()) {
    CacheEntry entry;
    try {
      Graph graph = build_graph(kind, t, g, format, handle);
      std::vector<Plan> plans = candidate_plans(graph, handle, filter, benchmark ? 8 : 1);
      if (plans.empty()) throw Unsupported("no cuDNN engine supports this convolution");
      const size_t best = plans.size() > 1 ? fastest_plan(plans, handle, t) : 0;
      entry.plan = std::make_shared<Plan>(std::move(plans[best]));
      for (Desc& part : graph.parts) entry.plan->keep_alive.push_back(std::move(part));
    } catch (const Unsupported& err) {
      entry.error = err.what();
    }
    found = cache->emplace(key, std::move(entry)).first;
  }
  if (!found->second.plan) throw Unsupported(found->second.error);
  execute(*found->second.plan, handle, t);
}

}  // namespace

at::Tensor forward(const at::Tensor& x, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, const ConvGeometry& g) {
  const at::MemoryFormat format = activation_memory_format(x);
  // Packed copies only for inputs that are neither NCHW nor NHWC (slices, expanded views);
  // weight follows the activations' layout, as in ATen's cuDNN path.
  const Operands t{x.contiguous(format), weight.contiguous(format),
                   at::empty({g.N, g.O, g.P, g.Q}, x.options().memory_format(format))};
  run(Kind::kForward, t, g, format);
  if (bias.has_value() && bias->defined()) t.output.add_(bias->view({1, g.O, 1, 1}));
  return t.output;
}

at::Tensor backward_data(const at::Tensor& grad_output, const at::Tensor& x,
                         const at::Tensor& weight, const ConvGeometry& g) {
  const at::MemoryFormat format = activation_memory_format(x);
  const Operands t{at::empty(x.sizes(), x.options().memory_format(format)),
                   weight.contiguous(format), grad_output.contiguous(format)};
  run(Kind::kBackwardData, t, g, format);
  return t.input;
}

at::Tensor backward_filter(const at::Tensor& grad_output, const at::Tensor& x,
                           const at::Tensor& weight, const ConvGeometry& g) {
  const at::MemoryFormat format = activation_memory_format(x);
  const Operands t{x.contiguous(format),
                   at::empty(weight.sizes(), weight.options().memory_format(format)),
                   grad_output.contiguous(format)};
  run(Kind::kBackwardFilter, t, g, format);
  return t.filter.contiguous();
}

#endif  // VQVAE_FAST_HAVE_CUDNN

}  // namespace vqvae_fast::cudnn_graph

#endif  // VQVAE_FAST_WITH_CUDA
