// The device-generic padded_conv2d: ATen's convolution with symmetric padding (top, left) on the
// unpadded x for the bulk of the output, im2col + GEMM for the border strips it does not produce
// (see padded_conv2d.h). No tensor of the padded input's size is ever allocated: the extra
// buffers are output-sized (the main convolution's result when its extent differs from the
// output's) or border-sized (the strips' im2col matrices).
#include <ATen/Functions.h>
#include <ATen/OpMathType.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "padded_conv2d.h"

namespace vqvae_fast {

namespace {

at::ScalarType opmath_dtype(at::ScalarType dtype) {
  return (dtype == at::kHalf || dtype == at::kBFloat16) ? at::kFloat : dtype;
}

at::Tensor region_of(const at::Tensor& t, const OutputRegion& r) {
  return t.narrow(2, r.p0, r.rows()).narrow(3, r.q0, r.cols());
}

bool has_main_part(const ConvGeometry& g) { return g.exact_P > 0 && g.exact_Q > 0; }

// A (rows, N * positions) matrix in the border columns' layout. Its width is rounded up to a
// multiple of 16 with zero columns: BLAS kernels run a GEMM with 31 columns at half the rate of
// one with 32 (a batch-1 Downsample border has 2 P - 1 positions), and the zeros add nothing to
// any product over the columns.
at::Tensor border_matrix(int64_t rows, const std::vector<OutputRegion>& regions,
                         const ConvGeometry& g, const at::TensorOptions& options) {
  constexpr int64_t kAlign = 16;
  const OutputRegion& last = regions.back();
  const int64_t used = last.cols_offset + g.N * last.size();
  const int64_t width = (used + kAlign - 1) / kAlign * kAlign;
  at::Tensor matrix = at::empty({rows, width}, options);
  matrix.narrow(1, used, width - used).zero_();
  return matrix;
}

// The im2col matrix (C*kH*kW, N * positions) of all border regions, in the opmath dtype.
at::Tensor border_columns(const at::Tensor& x, const ConvGeometry& g,
                          const std::vector<OutputRegion>& regions) {
  at::Tensor cols = border_matrix(g.C * g.kH * g.kW, regions, g,
                                  x.options().dtype(opmath_dtype(x.scalar_type())));
  for (const OutputRegion& r : regions) border_im2col(x, g, r, cols);
  return cols;
}

// The columns of `matrix` (rows x N * positions) that belong to region r, as (rows, N, P_r, Q_r).
at::Tensor region_columns(const at::Tensor& matrix, const ConvGeometry& g, const OutputRegion& r) {
  return matrix.narrow(1, r.cols_offset, g.N * r.size())
      .view({matrix.size(0), g.N, r.rows(), r.cols()});
}

// grad_output resized to the main convolution's output extent: a view when that extent fits in
// the output; zero-filled beyond the output otherwise (only when bottom < top or right < left).
at::Tensor main_part_grad(const at::Tensor& grad, const ConvGeometry& g) {
  if (g.main_P <= g.P && g.main_Q <= g.Q) {
    return grad.narrow(2, 0, g.main_P).narrow(3, 0, g.main_Q);
  }
  at::Tensor fitted = at::zeros({g.N, g.O, g.main_P, g.main_Q},
                                grad.options().memory_format(grad.suggest_memory_format()));
  fitted.narrow(2, 0, g.exact_P).narrow(3, 0, g.exact_Q)
      .copy_(grad.narrow(2, 0, g.exact_P).narrow(3, 0, g.exact_Q));
  return fitted;
}

}  // namespace

std::vector<OutputRegion> border_regions(const ConvGeometry& g) {
  std::vector<OutputRegion> regions;
  if (g.exact_P < g.P) regions.push_back({g.exact_P, g.P, 0, g.Q, 0});
  if (g.exact_P > 0 && g.exact_Q < g.Q) regions.push_back({0, g.exact_P, g.exact_Q, g.Q, 0});
  int64_t offset = 0;
  for (OutputRegion& r : regions) {
    r.cols_offset = offset;
    offset += g.N * r.size();
  }
  return regions;
}

at::MemoryFormat activation_memory_format(const at::Tensor& x) {
  const bool channels_last =
      x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous(at::MemoryFormat::Contiguous);
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

BorderParams make_border_params(const ConvGeometry& g, const OutputRegion& region,
                                const at::Tensor& cols, const at::Tensor& strided) {
  BorderParams b{};
  b.N = g.N;
  b.C = g.C;
  b.H = g.H;
  b.W = g.W;
  b.kH = g.kH;
  b.kW = g.kW;
  b.sH = g.sH;
  b.sW = g.sW;
  b.pad_top = g.pad_top;
  b.pad_left = g.pad_left;
  b.p0 = region.p0;
  b.p1 = region.p1;
  b.q0 = region.q0;
  b.q1 = region.q1;
  b.cols_ld = cols.size(1);
  b.cols_offset = region.cols_offset;
  for (int d = 0; d < 4; ++d) b.stride[d] = strided.stride(d);
  return b;
}

void border_im2col(const at::Tensor& x, const ConvGeometry& g, const OutputRegion& region,
                   at::Tensor& cols) {
  if (cols.numel() == 0 || region.size() == 0) return;
  if (x.is_cpu()) return border_im2col_cpu(x, g, region, cols);
#ifdef VQVAE_FAST_WITH_CUDA
  if (x.is_cuda()) return border_im2col_cuda(x, g, region, cols);
#endif
  TORCH_CHECK(false, "padded_conv2d: no border kernel for device ", x.device());
}

void border_col2im_add(const at::Tensor& cols, const ConvGeometry& g, const OutputRegion& region,
                       at::Tensor& dx) {
  if (cols.numel() == 0 || dx.numel() == 0 || region.size() == 0) return;
  if (dx.is_cpu()) return border_col2im_add_cpu(cols, g, region, dx);
#ifdef VQVAE_FAST_WITH_CUDA
  if (dx.is_cuda()) return border_col2im_add_cuda(cols, g, region, dx);
#endif
  TORCH_CHECK(false, "padded_conv2d: no border kernel for device ", dx.device());
}

at::Tensor decomposed_forward(const at::Tensor& x, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, const ConvGeometry& g) {
  const auto options = x.options().memory_format(activation_memory_format(x));
  const bool has_bias = bias.has_value() && bias->defined();
  if (g.N == 0 || g.O == 0) return at::empty({g.N, g.O, g.P, g.Q}, options);
  if (x.numel() == 0) {  // C, H or W is zero: every output reads only zeros
    at::Tensor y = at::zeros({g.N, g.O, g.P, g.Q}, options);
    if (has_bias) y.add_(bias->view({1, g.O, 1, 1}));
    return y;
  }

  at::Tensor y;
  if (has_main_part(g)) {
    at::Tensor main = at::convolution(x, weight, bias, {g.sH, g.sW}, {g.pad_top, g.pad_left},
                                      {1, 1}, /*transposed=*/false, {0, 0}, /*groups=*/1);
    if (g.main_P == g.P && g.main_Q == g.Q) {
      y = main.contiguous(activation_memory_format(x));
    } else {
      // An output-sized copy: the main result lands in the output, the border fills the rest.
      y = at::empty({g.N, g.O, g.P, g.Q}, options);
      y.narrow(2, 0, g.exact_P).narrow(3, 0, g.exact_Q)
          .copy_(main.narrow(2, 0, g.exact_P).narrow(3, 0, g.exact_Q));
    }
  } else {
    y = at::empty({g.N, g.O, g.P, g.Q}, options);
  }

  const std::vector<OutputRegion> regions = border_regions(g);
  if (regions.empty()) return y;
  // One GEMM for every border position of the whole batch:
  // (O, C*kH*kW) @ (C*kH*kW, N * positions) (+ bias), the weight viewed in place.
  const at::ScalarType acc = opmath_dtype(x.scalar_type());
  const at::Tensor w2d = weight.reshape({g.O, g.C * g.kH * g.kW}).to(acc);
  const at::Tensor cols = border_columns(x, g, regions);
  const at::Tensor out = has_bias ? at::addmm(bias->to(acc).view({g.O, 1}), w2d, cols)
                                  : at::mm(w2d, cols);
  for (const OutputRegion& r : regions) {
    region_of(y, r).copy_(region_columns(out, g, r).permute({1, 0, 2, 3}));
  }
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> decomposed_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const ConvGeometry& g,
    std::array<bool, 3> mask) {
  at::Tensor grad_x, grad_w, grad_b;
  if (mask[2]) grad_b = grad.sum({0, 2, 3});
  if (!mask[0] && !mask[1]) return {grad_x, grad_w, grad_b};

  const auto x_options = x.options().memory_format(activation_memory_format(x));
  if (x.numel() == 0 || grad.numel() == 0) {
    if (mask[0]) grad_x = at::zeros(x.sizes(), x_options);
    if (mask[1]) grad_w = at::zeros(weight.sizes(), weight.options());
    return {grad_x, grad_w, grad_b};
  }

  if (has_main_part(g)) {
    auto main = at::convolution_backward(main_part_grad(grad, g), x, weight, std::nullopt,
                                         {g.sH, g.sW}, {g.pad_top, g.pad_left}, {1, 1},
                                         /*transposed=*/false, {0, 0}, /*groups=*/1,
                                         {mask[0], mask[1], false});
    if (mask[0]) grad_x = std::get<0>(main).contiguous(activation_memory_format(x));
    if (mask[1]) grad_w = std::get<1>(main).contiguous();
  } else {
    if (mask[0]) grad_x = at::zeros(x.sizes(), x_options);
    if (mask[1]) grad_w = at::zeros(weight.sizes(), weight.options());
  }

  const std::vector<OutputRegion> regions = border_regions(g);
  if (regions.empty()) return {grad_x, grad_w, grad_b};
  const at::ScalarType acc = opmath_dtype(x.scalar_type());
  // grad_output at the border positions, laid out like the im2col columns: (O, N * positions).
  at::Tensor grad_border = border_matrix(g.O, regions, g, grad.options().dtype(acc));
  for (const OutputRegion& r : regions) {
    region_columns(grad_border, g, r).copy_(region_of(grad, r).permute({1, 0, 2, 3}));
  }
  if (mask[1]) {
    const at::Tensor cols = border_columns(x, g, regions);
    grad_w.add_(at::mm(grad_border, cols.t()).view({g.O, g.C, g.kH, g.kW}));
  }
  if (mask[0]) {
    const at::Tensor w2d = weight.reshape({g.O, g.C * g.kH * g.kW}).to(acc);
    const at::Tensor grad_cols = at::mm(w2d.t(), grad_border).contiguous();
    for (const OutputRegion& r : regions) border_col2im_add(grad_cols, g, r, grad_x);
  }
  return {grad_x, grad_w, grad_b};
}

}  // namespace vqvae_fast
