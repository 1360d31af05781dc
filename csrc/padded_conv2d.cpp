// Host file of padded_conv2d: the op schemas (the one TORCH_LIBRARY block of the vqvae_fast
// namespace), every argument check, and the dispatch to the CPU and CUDA implementations.
//
//   padded_conv2d(x, weight, bias, stride, padding) = conv2d(pad(x, padding), weight, bias, stride)
//   padding = (left, right, top, bottom), each >= 0 (F.pad order); stride = (sH, sW), each >= 1.
//
// Autograd (vqvae_fast.ops.padded_conv2d.register_autograd) calls padded_conv2d_backward; the
// fake (meta) implementations for torch.compile live in the same Python module.
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>

#include "padded_conv2d.h"

namespace vqvae_fast {

namespace {

bool is_supported_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16;
}

// Checks shared by both ops: x, weight, stride and padding. Returns the geometry.
ConvGeometry check_common(const char* op, const at::Tensor& x, const at::Tensor& weight,
                          at::IntArrayRef stride, at::IntArrayRef padding) {
  TORCH_CHECK(x.defined(), op, ": x must be a tensor");
  TORCH_CHECK(weight.defined(), op, ": weight must be a tensor");
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, C_in, H, W), got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be 4-D (C_out, C_in, kH, kW), got shape ",
              weight.sizes());
  TORCH_CHECK(is_supported_dtype(x.scalar_type()), op,
              ": x must have dtype float32, float64, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight has dtype ",
              weight.scalar_type(), " but x has dtype ", x.scalar_type(), "; they must match");
  TORCH_CHECK(weight.device() == x.device(), op, ": weight is on ", weight.device(),
              " but x is on ", x.device(), "; all tensors must be on the same device");
  TORCH_CHECK(weight.size(1) == x.size(1), op, ": weight expects ", weight.size(1),
              " input channels (weight.shape[1]) but x has ", x.size(1), " (x.shape[1])");
  TORCH_CHECK(weight.size(2) >= 1 && weight.size(3) >= 1, op,
              ": weight must have a kernel of at least 1x1, got shape ", weight.sizes());
  TORCH_CHECK(stride.size() == 2, op, ": stride must have 2 elements (sH, sW), got ", stride);
  TORCH_CHECK(stride[0] >= 1 && stride[1] >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(padding.size() == 4, op,
              ": padding must have 4 elements (left, right, top, bottom), got ", padding);
  for (size_t d = 0; d < 4; ++d) {
    TORCH_CHECK(padding[d] >= 0, op, ": padding must be >= 0, got padding[", d, "] = ",
                padding[d], " in ", padding);
  }

  ConvGeometry g{};
  g.N = x.size(0);
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.O = weight.size(0);
  g.kH = weight.size(2);
  g.kW = weight.size(3);
  g.sH = stride[0];
  g.sW = stride[1];
  g.pad_left = padding[0];
  g.pad_right = padding[1];
  g.pad_top = padding[2];
  g.pad_bottom = padding[3];
  const int64_t padded_H = g.H + g.pad_top + g.pad_bottom;
  const int64_t padded_W = g.W + g.pad_left + g.pad_right;
  TORCH_CHECK(padded_H >= g.kH && padded_W >= g.kW, op, ": x spatial size (", g.H, ", ", g.W,
              ") plus padding ", padding, " is smaller than the kernel (", g.kH, ", ", g.kW, ")");
  g.P = (padded_H - g.kH) / g.sH + 1;
  g.Q = (padded_W - g.kW) / g.sW + 1;
  const int64_t main_H = g.H + 2 * g.pad_top;
  const int64_t main_W = g.W + 2 * g.pad_left;
  g.main_P = main_H >= g.kH ? (main_H - g.kH) / g.sH + 1 : 0;
  g.main_Q = main_W >= g.kW ? (main_W - g.kW) / g.sW + 1 : 0;
  g.exact_P = std::min(g.main_P, g.P);
  g.exact_Q = std::min(g.main_Q, g.Q);
  if (g.exact_P == 0 || g.exact_Q == 0) g.exact_P = g.exact_Q = 0;
  return g;
}

at::Tensor padded_conv2d_cpu(const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                             at::IntArrayRef padding) {
  const ConvGeometry g = check_forward_args(x, weight, bias, stride, padding);
  return decomposed_forward(x, weight, bias, g);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> padded_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, std::array<bool, 3> output_mask) {
  const ConvGeometry g = check_backward_args(grad_output, x, weight, stride, padding);
  return decomposed_backward(grad_output, x, weight, g, output_mask);
}

#ifdef VQVAE_FAST_WITH_CUDA
at::Tensor padded_conv2d_cuda_entry(const at::Tensor& x, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                    at::IntArrayRef padding) {
  const ConvGeometry g = check_forward_args(x, weight, bias, stride, padding);
  return padded_conv2d_cuda(x, weight, bias, g);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> padded_conv2d_backward_cuda_entry(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& weight,
    at::IntArrayRef stride, at::IntArrayRef padding, std::array<bool, 3> output_mask) {
  const ConvGeometry g = check_backward_args(grad_output, x, weight, stride, padding);
  return padded_conv2d_backward_cuda(grad_output, x, weight, g, output_mask);
}
#endif

}  // namespace

ConvGeometry check_forward_args(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding) {
  const char* op = "vqvae_fast::padded_conv2d";
  ConvGeometry g = check_common(op, x, weight, stride, padding);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.O, op, ": bias must have shape (", g.O,
                ",) (weight.shape[0]), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), op, ": bias has dtype ",
                bias->scalar_type(), " but x has dtype ", x.scalar_type(), "; they must match");
    TORCH_CHECK(bias->device() == x.device(), op, ": bias is on ", bias->device(),
                " but x is on ", x.device(), "; all tensors must be on the same device");
  }
  return g;
}

ConvGeometry check_backward_args(const at::Tensor& grad_output, const at::Tensor& x,
                                 const at::Tensor& weight, at::IntArrayRef stride,
                                 at::IntArrayRef padding) {
  const char* op = "vqvae_fast::padded_conv2d_backward";
  ConvGeometry g = check_common(op, x, weight, stride, padding);
  TORCH_CHECK(grad_output.defined(), op, ": grad_output must be a tensor");
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.N && grad_output.size(1) == g.O &&
                  grad_output.size(2) == g.P && grad_output.size(3) == g.Q,
              op, ": grad_output must have the output's shape (", g.N, ", ", g.O, ", ", g.P, ", ",
              g.Q, "), got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == x.scalar_type(), op, ": grad_output has dtype ",
              grad_output.scalar_type(), " but x has dtype ", x.scalar_type(),
              "; they must match");
  TORCH_CHECK(grad_output.device() == x.device(), op, ": grad_output is on ",
              grad_output.device(), " but x is on ", x.device(),
              "; all tensors must be on the same device");
  return g;
}

TORCH_LIBRARY(vqvae_fast, m) {
  // The fake implementations and autograd formulas are registered from this Python module.
  m.set_python_module("vqvae_fast.ops.padded_conv2d");
  m.def("padded_conv2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[4] padding) -> Tensor");
  // Gradients of x, weight and bias; an entry of output_mask that is false gives None.
  m.def(
      "padded_conv2d_backward(Tensor grad_output, Tensor x, Tensor weight, int[2] stride, "
      "int[4] padding, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vqvae_fast, CPU, m) {
  m.impl("padded_conv2d", &padded_conv2d_cpu);
  m.impl("padded_conv2d_backward", &padded_conv2d_backward_cpu);
}

#ifdef VQVAE_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(vqvae_fast, CUDA, m) {
  m.impl("padded_conv2d", &padded_conv2d_cuda_entry);
  m.impl("padded_conv2d_backward", &padded_conv2d_backward_cuda_entry);
}
#endif

}  // namespace vqvae_fast
