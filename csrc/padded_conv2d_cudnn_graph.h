// The cuDNN operation graph of one padded_conv2d direction: the tensor descriptors (packed NCHW or
// NHWC strides, byte alignment), a convolution descriptor whose PRE_PADDINGS = (top, left) and
// POST_PADDINGS = (bottom, right) give the asymmetric padding without a padded copy, the
// forward / backward-data / backward-filter operation, and the graph holding it.
#pragma once

#include "padded_conv2d_cudnn_api.h"

#ifdef VQVAE_FAST_HAVE_CUDNN
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace vqvae_fast::cudnn_graph::detail {

enum class Kind : int64_t { kForward = 0, kBackwardData = 1, kBackwardFilter = 2 };

// The three tensors of a direction: input (x or dx), filter (w or dw), output (y or dy).
struct Operands {
  at::Tensor input, filter, output;
};

constexpr int64_t kInputUid = 1, kFilterUid = 2, kOutputUid = 3;

// Largest power of two (<= 16 bytes) dividing the address: cuDNN engines may assume it.
int64_t alignment_of(const at::Tensor& t);

// The operation graph and every descriptor it refers to (kept alive with the plan).
struct Graph {
  std::vector<Desc> parts;  // the three tensors, the convolution, the operation, the graph
  cudnnBackendDescriptor_t graph = nullptr;
};

// The finalized graph of direction `kind` on packed tensors in `format`.
Graph build_graph(Kind kind, const Operands& t, const ConvGeometry& g, at::MemoryFormat format,
                  cudnnHandle_t handle);

}  // namespace vqvae_fast::cudnn_graph::detail

#endif  // VQVAE_FAST_HAVE_CUDNN
