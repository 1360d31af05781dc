// Launchers of the CUDA border kernels of padded_conv2d (border_kernels.cu). A small interface
// in plain C++ and CUDA runtime types, so that the .cu file needs no torch headers.
#pragma once

#include <cuda_runtime_api.h>

#include "border_indexing.h"

namespace vqvae_fast::cuda {

enum class ElementType { kFloat32, kFloat64, kFloat16, kBFloat16 };

// The region's columns of cols (float; double for kFloat64) = im2col of x (border_indexing.h).
cudaError_t launch_border_im2col(ElementType type, const void* x, void* cols, const BorderParams& b,
                                 cudaStream_t stream);

// dx += col2im(cols) over the region described by b (b.stride: strides of dx).
cudaError_t launch_border_col2im_add(ElementType type, const void* cols, void* dx,
                                     const BorderParams& b, cudaStream_t stream);

}  // namespace vqvae_fast::cuda
