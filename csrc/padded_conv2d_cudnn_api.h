// The cuDNN backend (graph) API as padded_conv2d's cuDNN path uses it: the functions, taken from
// the libcudnn torch already loaded (dlopen(RTLD_NOLOAD) + dlsym, so the extension needs cudnn.h
// at build time but no link-time dependency on a particular libcudnn), their error checking, and
// an owning wrapper of one backend descriptor.
//
// Defines VQVAE_FAST_HAVE_CUDNN when the CUDA build found cudnn.h; everything below needs it.
#pragma once

#ifdef VQVAE_FAST_WITH_CUDA
#if __has_include(<cudnn.h>)
#define VQVAE_FAST_HAVE_CUDNN 1
#endif
#endif

#ifdef VQVAE_FAST_HAVE_CUDNN
#include <cudnn.h>

#include <cstdint>
#include <string>

#include "padded_conv2d_cudnn.h"

namespace vqvae_fast::cudnn_graph::detail {

struct Api {
  decltype(&cudnnBackendCreateDescriptor) create = nullptr;
  decltype(&cudnnBackendDestroyDescriptor) destroy = nullptr;
  decltype(&cudnnBackendSetAttribute) set = nullptr;
  decltype(&cudnnBackendGetAttribute) get = nullptr;
  decltype(&cudnnBackendFinalize) finalize = nullptr;
  decltype(&cudnnBackendExecute) execute = nullptr;
  decltype(&cudnnGetErrorString) error_string = nullptr;
  decltype(&cudnnSetStream) set_stream = nullptr;
  std::string missing;  // empty when every function was found
};

// The functions, loaded once; throws Unsupported when the library or a symbol is missing.
const Api& api();

// Throws Unsupported naming `what` unless `status` is success.
void check(cudnnStatus_t status, const char* what);

// Owns one backend descriptor.
class Desc {
 public:
  explicit Desc(cudnnBackendDescriptorType_t type);
  ~Desc();
  Desc(Desc&& other) noexcept;
  Desc& operator=(Desc&& other) noexcept;
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;

  cudnnBackendDescriptor_t get() const { return desc_; }

  Desc& set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
            const void* values);
  Desc& set_desc(cudnnBackendAttributeName_t name, const Desc& value);
  Desc& finalize();

 private:
  cudnnBackendDescriptor_t desc_ = nullptr;
};

}  // namespace vqvae_fast::cudnn_graph::detail

#endif  // VQVAE_FAST_HAVE_CUDNN
