// Index math of the border kernels, shared by the CPU loops and the CUDA kernels so that the
// CPU tests exercise the arithmetic the GPU runs. Plain C++ (no ATen, no CUDA headers).
//
// The border regions of one call (rectangles of output positions [p0, p1) x [q0, q1)) share one
// im2col matrix "cols" of K = C*kH*kW rows, row k = (c*kH + i)*kW + j, so that a single GEMM
// with the weight viewed as (O, K) covers all of them and the whole batch. Region r owns the
// columns [offset, offset + N*L) (L = its number of positions), batch-major:
//   cols[k, offset + n*L + (p - p0)*(q1 - q0) + q - q0] = x[n, c, sH p + i - top, sW q + j - left]
// with zero where the index falls in the padding. col2im goes the other way: every x element a
// region reads receives the sum of that region's cols entries that read it (a gather, so that
// each thread writes one element and needs no atomics). Zero columns may follow the last
// region's: they pad the matrix's width for the GEMM and no kernel here touches them.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define VQVAE_HD __host__ __device__ __forceinline__
#else
#define VQVAE_HD inline
#endif

namespace vqvae_fast {

struct BorderParams {
  int64_t N, C, H, W;      // x / dx sizes
  int64_t kH, kW, sH, sW;  // kernel and stride
  int64_t pad_top, pad_left;
  int64_t p0, p1, q0, q1;  // the output region
  int64_t cols_ld;         // row stride of cols (all regions' columns)
  int64_t cols_offset;     // first column of this region
  int64_t stride[4];       // element strides of x (im2col) or dx (col2im)
};

VQVAE_HD int64_t region_size(const BorderParams& b) { return (b.p1 - b.p0) * (b.q1 - b.q0); }

// cols as rows of L elements, one per (k, n): row = k*N + n.
VQVAE_HD int64_t cols_rows(const BorderParams& b) { return b.C * b.kH * b.kW * b.N; }

struct ColsRow {
  int64_t n, c, i, j;
  int64_t start;  // index in cols of the row's first element
};

VQVAE_HD ColsRow cols_row(const BorderParams& b, int64_t row) {
  ColsRow r;
  r.n = row % b.N;
  const int64_t k = row / b.N;
  r.j = k % b.kW;
  r.i = (k / b.kW) % b.kH;
  r.c = k / (b.kW * b.kH);
  r.start = k * b.cols_ld + b.cols_offset + r.n * region_size(b);
  return r;
}

// The x row / column that tap (i, j) reads for output row p / column q (may be out of bounds).
VQVAE_HD int64_t source_row(const BorderParams& b, int64_t i, int64_t p) {
  return b.sH * p + i - b.pad_top;
}
VQVAE_HD int64_t source_col(const BorderParams& b, int64_t j, int64_t q) {
  return b.sW * q + j - b.pad_left;
}

// Offset in x of the element that element l of cols row r copies, or -1 when it reads padding.
VQVAE_HD int64_t im2col_source_offset(const BorderParams& b, const ColsRow& r, int64_t l) {
  const int64_t width = b.q1 - b.q0;
  const int64_t m = source_row(b, r.i, b.p0 + l / width);
  const int64_t w = source_col(b, r.j, b.q0 + l % width);
  if (m < 0 || m >= b.H || w < 0 || w >= b.W) return -1;
  return r.n * b.stride[0] + r.c * b.stride[1] + m * b.stride[2] + w * b.stride[3];
}

// The x rectangle [m0, m1) x [w0, w1) that the region reads (clipped to x).
struct InputRect {
  int64_t m0, m1, w0, w1;
};

VQVAE_HD InputRect col2im_rect(const BorderParams& b) {
  InputRect r;
  r.m0 = source_row(b, 0, b.p0);
  r.m1 = source_row(b, b.kH - 1, b.p1 - 1) + 1;
  r.w0 = source_col(b, 0, b.q0);
  r.w1 = source_col(b, b.kW - 1, b.q1 - 1) + 1;
  r.m0 = r.m0 < 0 ? 0 : r.m0;
  r.w0 = r.w0 < 0 ? 0 : r.w0;
  r.m1 = r.m1 > b.H ? b.H : r.m1;
  r.w1 = r.w1 > b.W ? b.W : r.w1;
  if (r.m1 < r.m0) r.m1 = r.m0;
  if (r.w1 < r.w0) r.w1 = r.w0;
  return r;
}

VQVAE_HD int64_t col2im_numel(const BorderParams& b, const InputRect& r) {
  return b.N * b.C * (r.m1 - r.m0) * (r.w1 - r.w0);
}

// The x element (n, c, m, w) handled by flat index idx of the rectangle; returns its offset.
VQVAE_HD int64_t col2im_target(const BorderParams& b, const InputRect& r, int64_t idx,
                               int64_t& n, int64_t& c, int64_t& m, int64_t& w) {
  const int64_t width = r.w1 - r.w0;
  const int64_t height = r.m1 - r.m0;
  w = r.w0 + idx % width;
  int64_t rest = idx / width;
  m = r.m0 + rest % height;
  rest /= height;
  c = rest % b.C;
  n = rest / b.C;
  return n * b.stride[0] + c * b.stride[1] + m * b.stride[2] + w * b.stride[3];
}

// Sum over the taps (i, j) and region positions (p, q) with sH p + i - top = m and
// sW q + j - left = w of the cols entries that read x[n, c, m, w].
template <typename acc_t>
VQVAE_HD acc_t col2im_gather(const BorderParams& b, const acc_t* cols, int64_t n, int64_t c,
                             int64_t m, int64_t w) {
  const int64_t width = b.q1 - b.q0;
  const acc_t* base = cols + b.cols_offset + n * region_size(b);
  acc_t sum = acc_t(0);
  // Only taps with sH | (m + top - i) read row m: the first is (m + top) mod sH, then every sH-th
  // (m, w >= 0 and the paddings are >= 0, so the remainders are non-negative).
  for (int64_t i = (m + b.pad_top) % b.sH; i < b.kH; i += b.sH) {
    const int64_t ph = m + b.pad_top - i;  // sH * p; decreases with i
    if (ph < b.sH * b.p0) break;
    const int64_t p = ph / b.sH;
    if (p >= b.p1) continue;
    for (int64_t j = (w + b.pad_left) % b.sW; j < b.kW; j += b.sW) {
      const int64_t qw = w + b.pad_left - j;  // sW * q
      if (qw < b.sW * b.q0) break;
      const int64_t q = qw / b.sW;
      if (q >= b.q1) continue;
      const int64_t k = (c * b.kH + i) * b.kW + j;
      sum += base[k * b.cols_ld + (p - b.p0) * width + (q - b.q0)];
    }
  }
  return sum;
}

}  // namespace vqvae_fast
