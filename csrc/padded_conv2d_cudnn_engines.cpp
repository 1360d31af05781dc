// Engine choice and execution for one cuDNN graph (padded_conv2d_cudnn_engines.h).
#include "padded_conv2d_cudnn_engines.h"

#ifdef VQVAE_FAST_HAVE_CUDNN
#include <ATen/Functions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <utility>

namespace vqvae_fast::cudnn_graph::detail {

namespace {

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

}  // namespace

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

}  // namespace vqvae_fast::cudnn_graph::detail

#endif  // VQVAE_FAST_HAVE_CUDNN
