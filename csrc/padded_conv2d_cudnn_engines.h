// Engine choice and execution for one cuDNN graph: the candidate execution plans in heuristic
// order (mode A, then the fallback list) filtered as ATen filters its cuDNN convolutions, timing
// them when torch.backends.cudnn.benchmark asks for it, and running a plan.
#pragma once

#include "padded_conv2d_cudnn_graph.h"

#ifdef VQVAE_FAST_HAVE_CUDNN
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace vqvae_fast::cudnn_graph::detail {

// What the caller allows: engines that down-convert inputs never; TF32 tensor-core engines for
// fp32 only with allow_tf32; non-deterministic engines only without a determinism request.
struct EngineFilter {
  bool is_float32;
  bool allow_tf32;
  bool deterministic;
};

// A finalized execution plan and the descriptors it needs alive.
struct Plan {
  std::vector<Desc> keep_alive;  // graph parts and the engine configuration
  std::shared_ptr<Desc> plan;
  int64_t workspace = 0;
};

// Up to max_plans finalized plans, in heuristic order (mode A, then the fallback list).
std::vector<Plan> candidate_plans(Graph& graph, cudnnHandle_t handle, const EngineFilter& filter,
                                  size_t max_plans);

// Runs `plan` on the operands (workspace allocated through torch).
void execute(const Plan& plan, cudnnHandle_t handle, const Operands& t);

// Index of the fastest of `plans` (a few timed runs each; 0 inside a CUDA graph capture).
size_t fastest_plan(const std::vector<Plan>& plans, cudnnHandle_t handle, const Operands& t);

}  // namespace vqvae_fast::cudnn_graph::detail

#endif  // VQVAE_FAST_HAVE_CUDNN
