// Index math of the border kernels, shared by the CPU loops and the CUDA kernels so that the
// CPU tests exercise the exact arithmetic the GPU runs. Plain C++ (no ATen, no CUDA headers).
//
// A border region is a rectangle of output positions [p0, p1) x [q0, q1). Its im2col matrix
// ("cols", contiguous, shape (N, C*kH*kW, L) with L = (p1 - p0) * (q1 - q0)) holds
//   cols[n, (c*kH + i)*kW + j, (p - p0)*(q1 - q0) + (q - q0)] = x[n, c, sH p + i - top, sW q + j - left]
// with zero where the index falls in the padding. col2im goes the other way: every x element
// the region reads receives the sum of the cols entries that read it (a gather, so that each
// thread writes one element and no atomics are needed).
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
  int64_t stride[4];       // element strides of x (im2col) or dx (col2im)
};

VQVAE_HD int64_t region_size(const BorderParams& b) { return (b.p1 - b.p0) * (b.q1 - b.q0); }

// Number of cols elements: N * C*kH*kW * L.
VQVAE_HD int64_t im2col_numel(const BorderParams& b) {
  return b.N * b.C * b.kH * b.kW * region_size(b);
}

// Offset in x of the element that cols[idx] copies (idx is the flat index into cols),
// or -1 when it reads padding.
VQVAE_HD int64_t im2col_source_offset(const BorderParams& b, int64_t idx) {
  const int64_t width = b.q1 - b.q0;
  const int64_t L = region_size(b);
  const int64_t taps = b.kH * b.kW;
  const int64_t l = idx % L;
  const int64_t row = idx / L;  // n * C*taps + k
  const int64_t k = row % (b.C * taps);
  const int64_t n = row / (b.C * taps);
  const int64_t c = k / taps;
  const int64_t i = (k % taps) / b.kW;
  const int64_t j = k % b.kW;
  const int64_t m = b.sH * (b.p0 + l / width) + i - b.pad_top;
  const int64_t w = b.sW * (b.q0 + l % width) + j - b.pad_left;
  if (m < 0 || m >= b.H || w < 0 || w >= b.W) return -1;
  return n * b.stride[0] + c * b.stride[1] + m * b.stride[2] + w * b.stride[3];
}

// The x rectangle [m0, m1) x [w0, w1) that the region reads (clipped to x).
struct InputRect {
  int64_t m0, m1, w0, w1;
};

VQVAE_HD InputRect col2im_rect(const BorderParams& b) {
  InputRect r;
  r.m0 = b.sH * b.p0 - b.pad_top;
  r.m1 = b.sH * (b.p1 - 1) - b.pad_top + b.kH;
  r.w0 = b.sW * b.q0 - b.pad_left;
  r.w1 = b.sW * (b.q1 - 1) - b.pad_left + b.kW;
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
// sW q + j - left = w of cols[n, (c*kH + i)*kW + j, (p - p0)*width + (q - q0)].
template <typename acc_t>
VQVAE_HD acc_t col2im_gather(const BorderParams& b, const acc_t* cols, int64_t n, int64_t c,
                             int64_t m, int64_t w) {
  const int64_t width = b.q1 - b.q0;
  const int64_t L = region_size(b);
  const acc_t* base = cols + (n * b.C + c) * b.kH * b.kW * L;
  acc_t sum = acc_t(0);
  for (int64_t i = 0; i < b.kH; ++i) {
    const int64_t ph = m + b.pad_top - i;  // sH * p; decreases with i
    if (ph < b.sH * b.p0) break;
    if (ph % b.sH != 0) continue;
    const int64_t p = ph / b.sH;
    if (p >= b.p1) continue;
    for (int64_t j = 0; j < b.kW; ++j) {
      const int64_t qw = w + b.pad_left - j;  // sW * q
      if (qw < b.sW * b.q0) break;
      if (qw % b.sW != 0) continue;
      const int64_t q = qw / b.sW;
      if (q >= b.q1) continue;
      sum += base[(i * b.kW + j) * L + (p - b.p0) * width + (q - b.q0)];
    }
  }
  return sum;
}

}  // namespace vqvae_fast
