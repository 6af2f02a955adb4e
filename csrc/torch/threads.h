// One thread pool per process. Inside torch, OpenBLAS's own pthread pool spins against
// torch's OpenMP pool (measured on 2 cores: a compressed SmolLM2 forward ran 2.3x slower,
// 1.6x even with OPENBLAS_THREAD_TIMEOUT=4). So OpenBLAS stays single-threaded: the Gram
// runs one single-threaded syrk/GEMM slab on each of torch's own threads, the low-rank
// linear on torch's BLAS (cpu_gemm_ops.cpp), and only offline LAPACK calls (SVD,
// whitening) give OpenBLAS torch's thread count for the duration of one call.
// (An earlier note here said OpenBLAS serialises calls from several threads: it does not;
// the slabs had run serially because at::parallel_for was compiled without OpenMP.)
#pragma once

#include <ATen/Parallel.h>

extern "C" {
// Present only when linked against OpenBLAS; weak so other BLAS vendors still link.
void openblas_set_num_threads(int) __attribute__((weak));
}

namespace svdzip::torch_ops {

inline void set_blas_threads(int n) {
  if (openblas_set_num_threads != nullptr) openblas_set_num_threads(n);
}

// RAII: the core's BLAS uses torch's thread count inside the scope, one thread after it.
struct BlasThreadsForScope {
  BlasThreadsForScope() { set_blas_threads(at::get_num_threads()); }
  ~BlasThreadsForScope() { set_blas_threads(1); }
};

}  // namespace svdzip::torch_ops
