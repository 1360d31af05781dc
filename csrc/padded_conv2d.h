// padded_conv2d: convolution of x zero-padded by (left, right, top, bottom), without a padded copy.
//
// Declarations shared by the host file (schema, checks, dispatch), the device-generic
// "decomposed" algorithm, the CPU kernels and the CUDA glue.
//
// The decomposed algorithm. ATen's convolution only pads symmetrically, but with padding
// (top, left) on both sides it computes, on the unpadded x, exactly our output for every
// position it produces (both read x as zero outside its bounds, with the same alignment). It
// just produces main_P x main_Q positions instead of P x Q:
//   main_P = (H + 2 top - kH) / sH + 1   vs   P = (H + top + bottom - kH) / sH + 1
// (for Downsample, even H: main_P = P - 1). The positions [0, exact_P) x [0, exact_Q) come from
// that convolution; the rest of the output, at most two thin strips (the "border regions"),
// comes from an im2col of just those positions and a GEMM. The backward pass splits the same
// way: ATen's convolution_backward for the main part, col2im / GEMM for the border.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "border_indexing.h"

namespace vqvae_fast {

// Sizes of one call and how its output splits between the main convolution and the border.
struct ConvGeometry {
  int64_t N, C, H, W;    // x: (N, C, H, W)
  int64_t O, kH, kW;     // weight: (O, C, kH, kW)
  int64_t sH, sW;        // stride
  int64_t pad_left, pad_right, pad_top, pad_bottom;
  int64_t P, Q;          // output (N, O, P, Q)
  int64_t main_P, main_Q;    // output extent of ATen's conv with symmetric padding (top, left)
  int64_t exact_P, exact_Q;  // min(main, P/Q): the part of the output taken from it (0, 0: none)
};

// Output positions [p0, p1) x [q0, q1), and where the region's columns start in the border
// im2col matrix that all regions share (see border_indexing.h).
struct OutputRegion {
  int64_t p0, p1, q0, q1;
  int64_t cols_offset;
  int64_t rows() const { return p1 - p0; }
  int64_t cols() const { return q1 - q0; }
  int64_t size() const { return rows() * cols(); }
};

// All argument checks of both ops live in padded_conv2d.cpp; these return the geometry.
ConvGeometry check_forward_args(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding);
ConvGeometry check_backward_args(const at::Tensor& grad_output, const at::Tensor& x,
                                 const at::Tensor& weight, at::IntArrayRef stride,
                                 at::IntArrayRef padding);

// The output positions the main convolution does not produce (0, 1 or 2 disjoint strips),
// with their column offsets in the shared im2col matrix (N * size() columns each).
std::vector<OutputRegion> border_regions(const ConvGeometry& g);

// Memory format of the output (and of grad_input): channels_last when x is channels_last
// (and not also plain contiguous), else contiguous. The fake implementation in Python mirrors it.
at::MemoryFormat activation_memory_format(const at::Tensor& x);

// Device-generic implementation through ATen ops plus the border kernels below.
at::Tensor decomposed_forward(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const ConvGeometry& g);
std::tuple<at::Tensor, at::Tensor, at::Tensor> decomposed_backward(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& weight,
    const ConvGeometry& g, std::array<bool, 3> output_mask);

// The border kernels' view of one region of the im2col matrix `cols`; strides are those of
// `strided` (x or dx).
BorderParams make_border_params(const ConvGeometry& g, const OutputRegion& region,
                                const at::Tensor& cols, const at::Tensor& strided);

// Border kernels. cols is the shared (C*kH*kW, N * total positions) im2col matrix, contiguous,
// in x's opmath dtype (border_indexing.h); im2col fills the region's columns, col2im_add adds
// the transpose of that map for the region into dx.
void border_im2col(const at::Tensor& x, const ConvGeometry& g, const OutputRegion& region,
                   at::Tensor& cols);
void border_col2im_add(const at::Tensor& cols, const ConvGeometry& g, const OutputRegion& region,
                       at::Tensor& dx);

void border_im2col_cpu(const at::Tensor& x, const ConvGeometry& g, const OutputRegion& region,
                       at::Tensor& cols);
void border_col2im_add_cpu(const at::Tensor& cols, const ConvGeometry& g,
                           const OutputRegion& region, at::Tensor& dx);

#ifdef VQVAE_FAST_WITH_CUDA
void border_im2col_cuda(const at::Tensor& x, const ConvGeometry& g, const OutputRegion& region,
                        at::Tensor& cols);
void border_col2im_add_cuda(const at::Tensor& cols, const ConvGeometry& g,
                            const OutputRegion& region, at::Tensor& dx);

// CUDA entry points (padded_conv2d_cuda.cpp): choose cuDNN or the decomposed algorithm.
at::Tensor padded_conv2d_cuda(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const ConvGeometry& g);
std::tuple<at::Tensor, at::Tensor, at::Tensor> padded_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& x, const at::Tensor& weight,
    const ConvGeometry& g, std::array<bool, 3> output_mask);
#endif

}  // namespace vqvae_fast
