// CPU border kernels of padded_conv2d: im2col of a border region and its transpose (col2im),
// parallelised with at::parallel_for. The index math is border_indexing.h, shared with CUDA.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "padded_conv2d.h"

namespace vqvae_fast {

namespace {
// Elements per task: enough work to amortise a thread hand-off.
constexpr int64_t kGrain = 1 << 14;
}  // namespace

void border_im2col_cpu(const at::Tensor& x, const ConvGeometry& g, const OutputRegion& region,
                       at::Tensor& cols) {
  const BorderParams b = make_border_params(g, region, x);
  const int64_t total = im2col_numel(b);
  TORCH_CHECK(cols.is_contiguous() && cols.numel() == total, "border_im2col_cpu: bad cols buffer");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "border_im2col_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(cols.scalar_type() == c10::CppTypeToScalarType<acc_t>::value,
                "border_im2col_cpu: cols must have the opmath dtype of x");
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    acc_t* dst = cols.mutable_data_ptr<acc_t>();
    at::parallel_for(0, total, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) {
        const int64_t offset = im2col_source_offset(b, idx);
        dst[idx] = offset < 0 ? acc_t(0) : static_cast<acc_t>(src[offset]);
      }
    });
  });
}

void border_col2im_add_cpu(const at::Tensor& cols, const ConvGeometry& g,
                           const OutputRegion& region, at::Tensor& dx) {
  const BorderParams b = make_border_params(g, region, dx);
  const InputRect rect = col2im_rect(b);
  const int64_t total = col2im_numel(b, rect);
  TORCH_CHECK(cols.is_contiguous() && cols.numel() == im2col_numel(b),
              "border_col2im_add_cpu: bad cols buffer");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dx.scalar_type(), "border_col2im_add_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(cols.scalar_type() == c10::CppTypeToScalarType<acc_t>::value,
                "border_col2im_add_cpu: cols must have the opmath dtype of dx");
    const acc_t* src = cols.const_data_ptr<acc_t>();
    scalar_t* dst = dx.mutable_data_ptr<scalar_t>();
    // Each index owns one dx element: tasks never write the same element.
    at::parallel_for(0, total, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t idx = begin; idx < end; ++idx) {
        int64_t n, c, m, w;
        const int64_t offset = col2im_target(b, rect, idx, n, c, m, w);
        const acc_t sum = col2im_gather(b, src, n, c, m, w);
        dst[offset] = static_cast<scalar_t>(static_cast<acc_t>(dst[offset]) + sum);
      }
    });
  });
}

}  // namespace vqvae_fast
