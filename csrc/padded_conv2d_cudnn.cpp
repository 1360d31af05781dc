// padded_conv2d through cuDNN's graph (backend) API: a convolution descriptor with
// CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS = (top, left) and POST_PADDINGS = (bottom, right), so that
// forward, backward-data and backward-filter each run as one cuDNN engine on the unpadded
// tensors and produce exactly the requested sizes.
//
// This file runs a direction: it caches one execution plan per (shapes, layout, dtype, alignment,
// flags) and thread, like ATen's own cuDNN plans, on torch's handle (per thread and device). The
// parts, one job each: padded_conv2d_cudnn_api (the functions from the libcudnn torch loaded,
// descriptors), _graph (the operation graph), _engines (engine choice as ATen's: heuristics mode
// A then the fallback list, no down-converting engines, TF32 only with allow_tf32, deterministic
// engines on request, timed candidates with torch.backends.cudnn.benchmark), _version (the
// allow_tf32 accessor across torch releases).
#ifdef VQVAE_FAST_WITH_CUDA

#include "padded_conv2d_cudnn.h"

#include "padded_conv2d_cudnn_api.h"

#ifdef VQVAE_FAST_HAVE_CUDNN
#include <ATen/Context.h>
#include <ATen/Functions.h>
#include <ATen/cudnn/Handle.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "padded_conv2d_cudnn_engines.h"
#include "padded_conv2d_cudnn_version.h"
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

using namespace detail;

namespace {

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
