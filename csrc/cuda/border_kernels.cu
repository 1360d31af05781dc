// CUDA border kernels of padded_conv2d: im2col of a border region and its transpose (col2im,
// as a gather: one thread per dx element, no atomics). The index math is border_indexing.h,
// the same code the CPU kernels run. Only CUDA headers here: this file compiles in seconds.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/border_kernels.h"

namespace vqvae_fast::cuda {

namespace {

// Storage type <-> accumulation type (explicit conversions: torch builds with
// __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__).
template <typename T>
struct Element;

template <>
struct Element<float> {
  using acc = float;
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};

template <>
struct Element<double> {
  using acc = double;
  static __device__ __forceinline__ double load(double v) { return v; }
  static __device__ __forceinline__ double store(double v) { return v; }
};

template <>
struct Element<__half> {
  using acc = float;
  static __device__ __forceinline__ float load(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half store(float v) { return __float2half_rn(v); }
};

template <>
struct Element<__nv_bfloat16> {
  using acc = float;
  static __device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;  // grid-stride loops cover the rest

int blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    border_im2col_kernel(const T* __restrict__ x, typename Element<T>::acc* __restrict__ cols,
                         const BorderParams b, const int64_t total) {
  using acc_t = typename Element<T>::acc;
  const int64_t L = region_size(b);
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const ColsRow row = cols_row(b, idx / L);
    const int64_t offset = im2col_source_offset(b, row, idx % L);
    cols[row.start + idx % L] = offset < 0 ? acc_t(0) : Element<T>::load(x[offset]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    border_col2im_add_kernel(const typename Element<T>::acc* __restrict__ cols, T* __restrict__ dx,
                             const BorderParams b, const InputRect rect, const int64_t total) {
  using acc_t = typename Element<T>::acc;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += step) {
    int64_t n, c, m, w;
    const int64_t offset = col2im_target(b, rect, idx, n, c, m, w);
    const acc_t sum = col2im_gather(b, cols, n, c, m, w);
    dx[offset] = Element<T>::store(Element<T>::load(dx[offset]) + sum);
  }
}

template <typename T>
cudaError_t im2col(const void* x, void* cols, const BorderParams& b, cudaStream_t stream) {
  using acc_t = typename Element<T>::acc;
  const int64_t total = cols_rows(b) * region_size(b);
  if (total == 0) return cudaSuccess;
  border_im2col_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<acc_t*>(cols), b, total);
  return cudaGetLastError();
}

template <typename T>
cudaError_t col2im_add(const void* cols, void* dx, const BorderParams& b, cudaStream_t stream) {
  using acc_t = typename Element<T>::acc;
  const InputRect rect = col2im_rect(b);
  const int64_t total = col2im_numel(b, rect);
  if (total == 0) return cudaSuccess;
  border_col2im_add_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(
      static_cast<const acc_t*>(cols), static_cast<T*>(dx), b, rect, total);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_border_im2col(ElementType type, const void* x, void* cols, const BorderParams& b,
                                 cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat32: return im2col<float>(x, cols, b, stream);
    case ElementType::kFloat64: return im2col<double>(x, cols, b, stream);
    case ElementType::kFloat16: return im2col<__half>(x, cols, b, stream);
    case ElementType::kBFloat16: return im2col<__nv_bfloat16>(x, cols, b, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_border_col2im_add(ElementType type, const void* cols, void* dx,
                                     const BorderParams& b, cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat32: return col2im_add<float>(cols, dx, b, stream);
    case ElementType::kFloat64: return col2im_add<double>(cols, dx, b, stream);
    case ElementType::kFloat16: return col2im_add<__half>(cols, dx, b, stream);
    case ElementType::kBFloat16: return col2im_add<__nv_bfloat16>(cols, dx, b, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace vqvae_fast::cuda
