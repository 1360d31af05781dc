// Python module shell of vqvae_fast._C.
//
// The extension exposes no Python functions: its ops are registered with the torch dispatcher
// (TORCH_LIBRARY, in padded_conv2d.cpp) when the library is loaded, and called as torch.ops.vqvae_fast.*.
// The module only has to exist so that `import vqvae_fast._C` loads the shared library.
// It uses the limited Python API, so one build serves every Python version >= 3.10.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "vqvae_fast compiled ops (registered as torch.ops.vqvae_fast.*)",
      -1,    // no per-module state
      nullptr,
  };
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef VQVAE_FAST_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  // Read by vqvae_fast._extension: whether the CUDA kernels were compiled in.
  if (PyModule_AddIntConstant(module, "WITH_CUDA", with_cuda) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
