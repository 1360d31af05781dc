// CUDA implementation of padded_conv2d (host side): picks cuDNN's graph API or the decomposed
// algorithm, and launches the border kernels of the latter (cuda/border_kernels.cu).
//
// VQVAE_FAST_PADDED_CONV2D_IMPL, read on every call, chooses the implementation on CUDA tensors:
//   auto (default)  cuDNN graph API with pre/post padding; where cuDNN cannot run a call (no
//                   engine, library missing) the decomposed algorithm, with a one-time warning
//   cudnn           cuDNN only: an error where it cannot run
//   decomposed      ATen convolution (cuDNN, symmetric padding) on the unpadded input for the
//                   bulk of the output + im2col/GEMM of the border strips
// so that a benchmark can compare them in one process.
#ifdef VQVAE_FAST_WITH_CUDA

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

#include "cuda/border_kernels.h"
#include "padded_conv2d.h"
#include "padded_conv2d_cudnn.h"

namespace vqvae_fast {

namespace {

cuda::ElementType element_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return cuda::ElementType::kFloat32;
    case at::kDouble: return cuda::ElementType::kFloat64;
    case at::kHalf: return cuda::ElementType::kFloat16;
    case at::kBFloat16: return cuda::ElementType::kBFloat16;
    default: break;
  }
  TORCH_CHECK(false, "vqvae_fast::padded_conv2d: unsupported dtype ", dtype);
  return cuda::ElementType::kFloat32;  // not reached
}

enum class Impl { kAuto, kCudnn, kDecomposed };

Impl requested_impl() {
  const char* env = std::getenv("VQVAE_FAST_PADDED_CONV2D_IMPL");
  const std::string value = env == nullptr ? "" : env;
  if (value.empty() || value == "auto") return Impl::kAuto;
  if (value == "cudnn") return Impl::kCudnn;
  if (value == "decomposed") return Impl::kDecomposed;
  TORCH_CHECK(false, "VQVAE_FAST_PADDED_CONV2D_IMPL must be one of auto, cudnn, decomposed; got '",
              value, "'");
  return Impl::kAuto;  // not reached
}

// Nothing to convolve: the decomposed path answers with zeros / bias and no kernel at all.
bool is_empty_problem(const ConvGeometry& g) {
  return g.N == 0 || g.O == 0 || g.C == 0 || g.H == 0 || g.W == 0;
}

// Runs `cudnn_fn` unless the decomposed implementation is requested; falls back to `fallback`
// where cuDNN cannot run the call (an error instead when cuDNN was requested explicitly).
template <typename CudnnFn, typename FallbackFn>
auto with_cudnn(const char* direction, CudnnFn cudnn_fn, FallbackFn fallback) -> decltype(fallback()) {
  const Impl impl = requested_impl();
  if (impl != Impl::kDecomposed) {
    try {
      return cudnn_fn();
    } catch (const cudnn_graph::Unsupported& err) {
      TORCH_CHECK(impl != Impl::kCudnn, "vqvae_fast::padded_conv2d: VQVAE_FAST_PADDED_CONV2D_IMPL=cudnn "
                  "but cuDNN cannot run this ", direction, " pass: ", err.what());
      TORCH_WARN_ONCE("vqvae_fast::padded_conv2d: cuDNN cannot run this ", direction, " pass (",
                      err.what(), "); using the decomposed implementation instead");
    }
  }
  return fallback();
}

}  // namespace

void border_im2col_cuda(const at::Tensor& x, const ConvGeometry& g, const OutputRegion& region,
                        at::Tensor& cols) {
  const BorderParams b = make_border_params(g, region, cols, x);
  C10_CUDA_CHECK(cuda::launch_border_im2col(element_type(x.scalar_type()), x.const_data_ptr(),
                                            cols.mutable_data_ptr(), b,
                                            c10::cuda::getCurrentCUDAStream().stream()));
}

void border_col2im_add_cuda(const at::Tensor& cols, const ConvGeometry& g,
                            const OutputRegion& region, at::Tensor& dx) {
  const BorderParams b = make_border_params(g, region, cols, dx);
  C10_CUDA_CHECK(cuda::launch_border_col2im_add(element_type(dx.scalar_type()),
                                                cols.const_data_ptr(), dx.mutable_data_ptr(), b,
                                                c10::cuda::getCurrentCUDAStream().stream()));
}

at::Tensor padded_conv2d_cuda(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const ConvGeometry& g) {
  const c10::cuda::CUDAGuard guard(x.device());
  if (is_empty_problem(g)) return decomposed_forward(x, weight, bias, g);
  return with_cudnn(
      "forward", [&] { return cudnn_graph::forward(x, weight, bias, g); },
      [&] { return decomposed_forward(x, weight, bias, g); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> padded_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& weight,
    const ConvGeometry& g, std::array<bool, 3> output_mask) {
  const c10::cuda::CUDAGuard guard(x.device());
  if (is_empty_problem(g) || (!output_mask[0] && !output_mask[1])) {
    return decomposed_backward(grad_output, x, weight, g, output_mask);
  }
  return with_cudnn(
      "backward",
      [&] {
        at::Tensor grad_x, grad_w, grad_b;
        if (output_mask[0]) grad_x = cudnn_graph::backward_data(grad_output, x, weight, g);
        if (output_mask[1]) grad_w = cudnn_graph::backward_filter(grad_output, x, weight, g);
        if (output_mask[2]) grad_b = grad_output.sum({0, 2, 3});
        return std::make_tuple(grad_x, grad_w, grad_b);
      },
      [&] { return decomposed_backward(grad_output, x, weight, g, output_mask); });
}

}  // namespace vqvae_fast

#endif  // VQVAE_FAST_WITH_CUDA
