// CPU border kernels of padded_conv2d: im2col of a border region and its transpose (col2im),
// parallelised with at::parallel_for. The index math is border_indexing.h, shared with CUDA
// (the CUDA kernels evaluate the same functions per element; the loops here hoist them).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "padded_conv2d.h"

namespace vqvae_fast {

namespace {
// Elements per task: enough work to amortise a thread hand-off.
constexpr int64_t kGrain = 1 << 14;

// The output columns [q_in, q_out) of a region whose tap j reads inside x (q_in <= q_out, both
// clamped to [q0, q1]): the im2col loop copies those and zero-fills the others.
struct ColumnSpan {
  int64_t q_in, q_out;
};

ColumnSpan inside_columns(const BorderParams& b, int64_t j) {
  // source_col(q) = sW q + j - left is inside for 0 <= sW q + j - left <= W - 1.
  const int64_t lowest = b.pad_left - j;       // sW q >= lowest
  const int64_t highest = b.W - 1 + lowest;    // sW q <= highest
  int64_t q_in = lowest > 0 ? (lowest + b.sW - 1) / b.sW : 0;
  int64_t q_out = highest >= 0 ? highest / b.sW + 1 : 0;
  q_in = std::clamp(q_in, b.q0, b.q1);
  q_out = std::clamp(q_out, q_in, b.q1);
  return {q_in, q_out};
}
}  // namespace

void border_im2col_cpu(const at::Tensor& x, const ConvGeometry& g, const OutputRegion& region,
                       at::Tensor& cols) {
  const BorderParams b = make_border_params(g, region, cols, x);
  const int64_t rows = cols_rows(b);
  const int64_t L = region_size(b);
  const int64_t width = b.q1 - b.q0;
  TORCH_CHECK(cols.is_contiguous() && cols.size(0) * b.N == rows &&
                  b.cols_offset + b.N * L <= b.cols_ld,
              "border_im2col_cpu: bad cols buffer");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "border_im2col_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(cols.scalar_type() == c10::CppTypeToScalarType<acc_t>::value,
                "border_im2col_cpu: cols must have the opmath dtype of x");
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    acc_t* dst = cols.mutable_data_ptr<acc_t>();
    // Tasks take ranges of im2col rows k = (c, i, j): the tap's geometry is worked out once per
    // k, then each image n gets its row of L elements.
    const int64_t K = rows / b.N;
    at::parallel_for(0, K, std::max<int64_t>(1, kGrain / std::max<int64_t>(b.N * L, 1)),
                     [&](int64_t k_begin, int64_t k_end) {
      for (int64_t k = k_begin; k < k_end; ++k) {
        const ColsRow r = cols_row(b, k * b.N);  // image 0; image n's row follows at + n * L
        // Positions q in [q_in, q_out) read inside x for this tap column; the rest read padding.
        const ColumnSpan span = inside_columns(b, r.j);
        const int64_t step = b.sW * b.stride[3];
        const int64_t first_col = source_col(b, r.j, span.q_in) * b.stride[3];
        for (int64_t n = 0; n < b.N; ++n) {
          const scalar_t* plane = src + n * b.stride[0] + r.c * b.stride[1];
          acc_t* out = dst + r.start + n * L;
          for (int64_t p = b.p0; p < b.p1; ++p) {
            const int64_t m = source_row(b, r.i, p);
            if (m < 0 || m >= b.H) {
              out = std::fill_n(out, width, acc_t(0));
              continue;
            }
            out = std::fill_n(out, span.q_in - b.q0, acc_t(0));
            if (span.q_in < span.q_out) {
              const scalar_t* in = plane + m * b.stride[2] + first_col;
              for (int64_t q = span.q_in; q < span.q_out; ++q, in += step) {
                *out++ = static_cast<acc_t>(*in);
              }
            }
            out = std::fill_n(out, b.q1 - span.q_out, acc_t(0));
          }
        }
      }
    });
  });
}

void border_col2im_add_cpu(const at::Tensor& cols, const ConvGeometry& g,
                           const OutputRegion& region, at::Tensor& dx) {
  const BorderParams b = make_border_params(g, region, cols, dx);
  const InputRect rect = col2im_rect(b);
  const int64_t total = col2im_numel(b, rect);
  TORCH_CHECK(cols.is_contiguous() && cols.size(0) * b.N == cols_rows(b) &&
                  b.cols_offset + b.N * region_size(b) <= b.cols_ld,
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
