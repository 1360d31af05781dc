// Index math of the border kernels, shared by the CPU loops and the CUDA kernels so that the
// CPU tests exercise the arithmetic the GPU runs. Plain C++ (no ATen, no CUDA headers).
//
// A border region is a rectangle of output positions [p0, p1) x [q0, q1) together with the
// kernel taps [i0, i1) x [j0, j1) that read x somewhere in it (the other taps only ever read
// padding, so they are left out of the GEMM). Its im2col matrix ("cols", contiguous, shape
// (K, N, L) with K = C * (i1 - i0) * (j1 - j0) and L = (p1 - p0) * (q1 - q0)) holds
//   cols[(c*(i1-i0) + i-i0)*(j1-j0) + j-j0, n, (p - p0)*(q1 - q0) + q - q0]
//       = x[n, c, sH p + i - top, sW q + j - left]
// with zero where the index falls in the padding; N sits next to L so that one GEMM
// (O x K) @ (K x N*L) covers the whole batch. col2im goes the other way: every x element the
// region reads receives the sum of the cols entries that read it (a gather, so that each thread
// writes one element and needs no atomics).
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
  int64_t sH, sW;          // stride
  int64_t pad_top, pad_left;
  int64_t p0, p1, q0, q1;  // the output region
  int64_t i0, i1, j0, j1;  // the taps that read x in it
  int64_t stride[4];       // element strides of x (im2col) or dx (col2im)
};

VQVAE_HD int64_t region_size(const BorderParams& b) { return (b.p1 - b.p0) * (b.q1 - b.q0); }
VQVAE_HD int64_t region_taps(const BorderParams& b) { return (b.i1 - b.i0) * (b.j1 - b.j0); }

// One row of cols: the channel and tap it reads, for batch element n.
struct ColsRow {
  int64_t n, c, i, j;
};

VQVAE_HD int64_t cols_rows(const BorderParams& b) { return b.C * region_taps(b) * b.N; }

VQVAE_HD ColsRow cols_row(const BorderParams& b, int64_t row) {
  ColsRow r;
  r.n = row % b.N;
  const int64_t k = row / b.N;
  const int64_t tap = k % region_taps(b);
  r.c = k / region_taps(b);
  r.i = b.i0 + tap / (b.j1 - b.j0);
  r.j = b.j0 + tap % (b.j1 - b.j0);
  return r;
}

// The x row / column that tap (i, j) reads for output row p / column q (may be out of bounds).
VQVAE_HD int64_t source_row(const BorderParams& b, int64_t i, int64_t p) {
  return b.sH * p + i - b.pad_top;
}
VQVAE_HD int64_t source_col(const BorderParams& b, int64_t j, int64_t q) {
  return b.sW * q + j - b.pad_left;
}

// Offset in x of the element that cols[row, l] copies, or -1 when it reads padding.
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
  r.m0 = source_row(b, b.i0, b.p0);
  r.m1 = source_row(b, b.i1 - 1, b.p1 - 1) + 1;
  r.w0 = source_col(b, b.j0, b.q0);
  r.w1 = source_col(b, b.j1 - 1, b.q1 - 1) + 1;
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

// Sum over the taps (i, j) of the region and positions (p, q) in it with
// sH p + i - top = m and sW q + j - left = w of the cols entries that read x[n, c, m, w].
template <typename acc_t>
VQVAE_HD acc_t col2im_gather(const BorderParams& b, const acc_t* cols, int64_t n, int64_t c,
                             int64_t m, int64_t w) {
  const int64_t width = b.q1 - b.q0;
  const int64_t L = region_size(b);
  const int64_t taps_w = b.j1 - b.j0;
  acc_t sum = acc_t(0);
  for (int64_t i = b.i0; i < b.i1; ++i) {
    const int64_t ph = m + b.pad_top - i;  // sH * p; decreases with i
    if (ph < b.sH * b.p0) break;
    if (ph % b.sH != 0) continue;
    const int64_t p = ph / b.sH;
    if (p >= b.p1) continue;
    for (int64_t j = b.j0; j < b.j1; ++j) {
      const int64_t qw = w + b.pad_left - j;  // sW * q
      if (qw < b.sW * b.q0) break;
      if (qw % b.sW != 0) continue;
      const int64_t q = qw / b.sW;
      if (q >= b.q1) continue;
      const int64_t k = (c * (b.i1 - b.i0) + (i - b.i0)) * taps_w + (j - b.j0);
      sum += cols[(k * b.N + n) * L + (p - b.p0) * width + (q - b.q0)];
    }
  }
  return sum;
}

}  // namespace vqvae_fast
