// padded_conv2d through cuDNN's graph (backend) API, whose convolution descriptor takes separate
// pre- and post-paddings: one cuDNN call per direction, exact output size, no padded copy.
// Compiled with the CUDA part only; without cudnn.h at build time every call throws Unsupported.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "padded_conv2d.h"

namespace vqvae_fast::cudnn_graph {

// Thrown when cuDNN cannot run this call: library or symbols missing, no engine supports the
// graph, or a cuDNN call failed. The caller may fall back to the decomposed implementation.
struct Unsupported : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Whether this build has the cuDNN path (cudnn.h was found at compile time).
bool compiled();

// y = conv(x, weight) (+ bias), same memory format as decomposed_forward.
at::Tensor forward(const at::Tensor& x, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias, const ConvGeometry& g);
// grad_x, in x's activation memory format.
at::Tensor backward_data(const at::Tensor& grad_output, const at::Tensor& x,
                         const at::Tensor& weight, const ConvGeometry& g);
// grad_weight, contiguous.
at::Tensor backward_filter(const at::Tensor& grad_output, const at::Tensor& x,
                           const at::Tensor& weight, const ConvGeometry& g);

}  // namespace vqvae_fast::cudnn_graph
