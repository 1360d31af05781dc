// The cuDNN functions from the libcudnn torch loaded, and the descriptor wrapper
// (padded_conv2d_cudnn_api.h).
#include "padded_conv2d_cudnn_api.h"

#ifdef VQVAE_FAST_HAVE_CUDNN
#include <dlfcn.h>

#include <type_traits>
#include <utility>

namespace vqvae_fast::cudnn_graph::detail {

const Api& api() {
  static const Api table = [] {
    Api a;
    const std::string name = "libcudnn.so." + std::to_string(CUDNN_MAJOR);
    void* lib = dlopen(name.c_str(), RTLD_LAZY | RTLD_NOLOAD);
    if (lib == nullptr) lib = dlopen(name.c_str(), RTLD_LAZY | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* err = dlerror();
      a.missing = name + " could not be opened (" + (err ? err : "unknown error") + ")";
      return a;
    }
    auto load = [&](auto& fn, const char* symbol) {
      fn = reinterpret_cast<std::decay_t<decltype(fn)>>(dlsym(lib, symbol));
      if (fn == nullptr && a.missing.empty()) a.missing = name + " has no symbol " + symbol;
    };
    load(a.create, "cudnnBackendCreateDescriptor");
    load(a.destroy, "cudnnBackendDestroyDescriptor");
    load(a.set, "cudnnBackendSetAttribute");
    load(a.get, "cudnnBackendGetAttribute");
    load(a.finalize, "cudnnBackendFinalize");
    load(a.execute, "cudnnBackendExecute");
    load(a.error_string, "cudnnGetErrorString");
    load(a.set_stream, "cudnnSetStream");
    return a;
  }();
  if (!table.missing.empty()) throw Unsupported(table.missing);
  return table;
}

void check(cudnnStatus_t status, const char* what) {
  if (status != CUDNN_STATUS_SUCCESS) {
    throw Unsupported(std::string("cuDNN ") + what + " failed: " + api().error_string(status));
  }
}

Desc::Desc(cudnnBackendDescriptorType_t type) {
  check(api().create(type, &desc_), "cudnnBackendCreateDescriptor");
}

Desc::~Desc() {
  if (desc_ != nullptr) api().destroy(desc_);
}

Desc::Desc(Desc&& other) noexcept : desc_(std::exchange(other.desc_, nullptr)) {}

Desc& Desc::operator=(Desc&& other) noexcept {
  std::swap(desc_, other.desc_);
  return *this;
}

Desc& Desc::set(cudnnBackendAttributeName_t name, cudnnBackendAttributeType_t type, int64_t count,
                const void* values) {
  check(api().set(desc_, name, type, count, values), "cudnnBackendSetAttribute");
  return *this;
}

Desc& Desc::set_desc(cudnnBackendAttributeName_t name, const Desc& value) {
  cudnnBackendDescriptor_t raw = value.get();
  return set(name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
}

Desc& Desc::finalize() {
  check(api().finalize(desc_), "cudnnBackendFinalize");
  return *this;
}

}  // namespace vqvae_fast::cudnn_graph::detail

#endif  // VQVAE_FAST_HAVE_CUDNN
