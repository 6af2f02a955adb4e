// The Python extension module: importing it loads this library, which runs the
// TORCH_LIBRARY registrations. Kept free of torch headers so it compiles in seconds.
#include <pybind11/pybind11.h>

#include "svdzip/core.h"
#if SVDZIP_WITH_CUDA
#include "svdzip/cuda.h"
#endif

#ifndef SVDZIP_OPENMP
#define SVDZIP_OPENMP 0
#endif

#ifndef SVDZIP_TORCH_VERSION
#define SVDZIP_TORCH_VERSION "unknown"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "svdzip native ops (registered as torch.ops.svdzip.*)";
  m.def("build_info", [] {
    pybind11::dict d;
    d["core"] = svdzip::core::build_info();
    d["torch_version"] = SVDZIP_TORCH_VERSION;
    d["cuda"] = bool(SVDZIP_WITH_CUDA);
    // Without OpenMP the CPU ops' at::parallel_for runs serially (see torch_ops.cmake).
    d["openmp"] = bool(SVDZIP_OPENMP);
#if SVDZIP_WITH_CUDA
    d["cuda_core"] = svdzip::cuda::build_info();
#endif
    return d;
  }, "How this extension was built: core info, the torch it was compiled against, CUDA, OpenMP.");
}
