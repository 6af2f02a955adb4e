// svdzip CUDA core: the same numerics as svdzip/core.h on device buffers.
//
// No torch types here either: a C++ stack links `svdzip::core_cuda`, passes device pointers
// (row-major, like the CPU core) and a Context naming the stream and the cuBLAS/cuSOLVER
// handles to use. Every call is enqueued on ctx.stream; calls that must look at a result
// (SVD convergence, Cholesky success) synchronise that stream only. Scratch memory comes
// from a Workspace the caller provides, so torch can hand out its caching allocator.
// Errors throw svdzip::core::Error naming the CUDA/cuBLAS/cuSOLVER call and its status.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstddef>
#include <vector>

#include "svdzip/core.h"

namespace svdzip::cuda {

using core::index_t;

struct Context {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;       // must already be bound to `stream` (cublasSetStream)
  cusolverDnHandle_t solver = nullptr; // likewise (cusolverDnSetStream)
};

// Handles created once per device and thread, bound to `stream` on every call. For C++
// consumers without a framework; torch's glue passes torch's own cached handles instead.
Context default_context(cudaStream_t stream = nullptr);

// Scratch memory for one svdzip call: every buffer stays valid until the Workspace dies.
class Workspace {
 public:
  virtual ~Workspace() = default;
  virtual void* allocate(std::size_t bytes) = 0;
  template <typename T>
  T* get(index_t count) { return static_cast<T*>(allocate(sizeof(T) * std::size_t(count))); }
};

// cudaMallocAsync/cudaFreeAsync on one stream: the default for C++ consumers.
class StreamWorkspace final : public Workspace {
 public:
  explicit StreamWorkspace(cudaStream_t stream) : stream_(stream) {}
  ~StreamWorkspace() override;
  void* allocate(std::size_t bytes) override;
 private:
  cudaStream_t stream_;
  std::vector<void*> blocks_;
};

// acc (n x n, symmetric on entry) += alpha * x^T x for x (rows x n, row stride ldx).
// syrk on one triangle then a mirror kernel; the float->double overload widens chunks of
// rows in the workspace so long sums keep fp64 accuracy.
void gram_accumulate(const Context&, Workspace&, float* acc, const float* x, index_t rows,
                     index_t n, index_t ldx, double alpha);
void gram_accumulate(const Context&, Workspace&, double* acc, const double* x, index_t rows,
                     index_t n, index_t ldx, double alpha);
void gram_accumulate(const Context&, Workspace&, double* acc, const float* x, index_t rows,
                     index_t n, index_t ldx, double alpha);

// acc (n x n) += alpha * x^T y for x, y (rows x n, strides ldx, ldy): one cuBLAS GEMM.
void cross_gram_accumulate(const Context&, float* acc, const float* x, const float* y,
                           index_t rows, index_t n, index_t ldx, index_t ldy, double alpha);
void cross_gram_accumulate(const Context&, double* acc, const double* x, const double* y,
                           index_t rows, index_t n, index_t ldx, index_t ldy, double alpha);

// acc[j] += alpha * sum_i |x_ij|   and   acc[j] = max(acc[j], max_i |x_ij|); NaN sticks.
// Deterministic: per-slab partials reduced in a fixed order, no float atomics.
template <typename Acc, typename T>
void abs_sum_accumulate(const Context&, Workspace&, Acc* acc, const T* x, index_t rows,
                        index_t n, index_t ldx, double alpha);
template <typename Acc, typename T>
void abs_max_accumulate(const Context&, Workspace&, Acc* acc, const T* x, index_t rows,
                        index_t n, index_t ldx);

// Rank-k truncated SVD of `batch` contiguous m x n matrices, outputs as in core::batched_svd.
// Matrices of at most 32 x 32 go to gesvdjBatched in one call; larger ones to gesvdj one by
// one on the stream. A matrix on which Jacobi does not converge is redone with QR-based
// gesvd, mirroring the CPU core's gesdd -> gesvd fallback. Throws on non-finite input.
template <typename T>
void batched_svd(const Context&, Workspace&, const T* a, index_t batch, index_t m, index_t n,
                 index_t k, T* u, T* s, T* vh);

// Same contract as core::whitening_factor (Cholesky, jitter * 10^i * mean(diag), i = 0..4,
// then the clamped eigen factor), with potrf / syevd. Synchronises ctx.stream.
template <typename T>
core::WhiteningInfo whitening_factor(const Context&, Workspace&, const T* g, index_t n,
                                     double jitter, T* factor);

// y (rows x m) = (x B^T) A^T + bias: two GEMMs (GEMV for one row) with the rows x k
// intermediate in the workspace. bias may be nullptr.
template <typename T>
void lowrank_linear(const Context&, Workspace&, const T* x, index_t rows, index_t n, index_t ldx,
                    const T* a, index_t m, index_t k, const T* b,
                    const typename core::nondeduced<T>::type* bias, T* y);

// CUDA runtime, cuBLAS and cuSOLVER versions this library was built against and runs with.
std::string build_info();

}  // namespace svdzip::cuda
