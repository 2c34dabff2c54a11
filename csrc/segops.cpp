// The Python extension module segops._C: build facts only. Ops are reached through
// torch.ops.segops, registered when this library is loaded.
#include <Python.h>
#include <pybind11/pybind11.h>

#include <string>

#ifdef SEGOPS_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

// SEGOPS_CUDA_ARCHS is a bare token list such as 8.0,9.0+PTX (see setup.py).
#define SEGOPS_STR_(...) #__VA_ARGS__
#define SEGOPS_STR(...) SEGOPS_STR_(__VA_ARGS__)

namespace {

bool with_cuda() {
#ifdef SEGOPS_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The CUDA runtime version segops was compiled against, e.g. "13.0"; "" without CUDA.
std::string cuda_version() {
#ifdef SEGOPS_WITH_CUDA
  return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
#else
  return "";
#endif
}

// The torch version segops was compiled against (setup.py passes its characters' codes).
// Stored after a marker so that segops can read it from the library file even when the
// library cannot be loaded (see segops/_extension.py).
#ifdef SEGOPS_TORCH_VERSION_CHARS
constexpr char kTorchVersionRecord[] = {'s', 'e', 'g', 'o', 'p', 's', '-', 't', 'o', 'r', 'c',
                                        'h', '=', SEGOPS_TORCH_VERSION_CHARS, '\0'};
#else
constexpr char kTorchVersionRecord[] = "segops-torch=";
#endif
constexpr size_t kTorchVersionMarker = 13;  // strlen("segops-torch=")

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "segops compiled kernels; ops live in torch.ops.segops";
  m.def("with_cuda", &with_cuda, "True when the CUDA kernels were compiled in.");
  m.def("cuda_version", &cuda_version, "CUDA runtime version compiled against, or ''.");
  m.def("torch_version",
        [] {
          // volatile read: the record must survive in the binary, whole, for the loader's
          // fallback to find it.
          const volatile char* p = kTorchVersionRecord + kTorchVersionMarker;
          std::string s;
          while (*p) s.push_back(*p++);
          return s;
        },
        "The torch version segops was compiled against, e.g. '2.13.0+cpu' ('' if unknown).");
  m.def("cuda_arch_list",
        [] {
#ifdef SEGOPS_CUDA_ARCHS
          return std::string(SEGOPS_STR(SEGOPS_CUDA_ARCHS));
#else
          return std::string();
#endif
        },
        "The GPU archs (TORCH_CUDA_ARCH_LIST) the CUDA kernels were compiled for, or ''.");
}
