// Shared helpers of the CUDA core: status checks that name the failing call, and float /
// double overloads of the cuBLAS/cuSOLVER routines so kernels are written once as templates.
#pragma once

#include <string>

#include "svdzip/cuda.h"

namespace svdzip::cuda::detail {

const char* solver_status_name(cusolverStatus_t s);

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw core::Error(std::string(what) + " failed: " + cudaGetErrorName(e) + " (" +
                      cudaGetErrorString(e) + ")");
}
inline void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw core::Error(std::string(what) + " failed: " + cublasGetStatusName(s));
}
inline void check(cusolverStatus_t s, const char* what) {
  if (s != CUSOLVER_STATUS_SUCCESS)
    throw core::Error(std::string(what) + " failed: " + solver_status_name(s));
}
// After a kernel launch: launch-configuration errors surface here, not at the next call.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// cuSOLVER's legacy API takes int sizes; refuse anything that would not fit.
int to_int(index_t v, const char* name);

inline unsigned blocks_for(index_t count, unsigned threads) {
  index_t b = (count + threads - 1) / threads;
  return static_cast<unsigned>(b < 65535 ? (b > 0 ? b : 1) : 65535);
}

// Copies `count` values device -> host on the stream and waits for them.
template <typename T>
void to_host(const Context& ctx, T* host, const T* dev, index_t count, const char* what) {
  check(cudaMemcpyAsync(host, dev, sizeof(T) * count, cudaMemcpyDeviceToHost, ctx.stream), what);
  check(cudaStreamSynchronize(ctx.stream), what);
}

// Number of non-finite entries of a (rows x n, row stride ld), computed on the device.
template <typename T>
index_t count_nonfinite(const Context& ctx, Workspace& ws, const T* a, index_t rows, index_t n,
                        index_t ld);

// ---- typed overloads ---------------------------------------------------------------------
inline cublasStatus_t syrk(cublasHandle_t h, int64_t n, int64_t k, const float* alpha,
                           const float* a, int64_t lda, const float* beta, float* c, int64_t ldc) {
  return cublasSsyrk_64(h, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, n, k, alpha, a, lda, beta, c, ldc);
}
inline cublasStatus_t syrk(cublasHandle_t h, int64_t n, int64_t k, const double* alpha,
                           const double* a, int64_t lda, const double* beta, double* c,
                           int64_t ldc) {
  return cublasDsyrk_64(h, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, n, k, alpha, a, lda, beta, c, ldc);
}
inline cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int64_t m,
                           int64_t n, int64_t k, const float* alpha, const float* a, int64_t lda,
                           const float* b, int64_t ldb, const float* beta, float* c, int64_t ldc) {
  return cublasSgemm_64(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int64_t m,
                           int64_t n, int64_t k, const double* alpha, const double* a, int64_t lda,
                           const double* b, int64_t ldb, const double* beta, double* c,
                           int64_t ldc) {
  return cublasDgemm_64(h, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline cublasStatus_t gemv(cublasHandle_t h, cublasOperation_t t, int64_t m, int64_t n,
                           const float* alpha, const float* a, int64_t lda, const float* x,
                           const float* beta, float* y) {
  return cublasSgemv_64(h, t, m, n, alpha, a, lda, x, 1, beta, y, 1);
}
inline cublasStatus_t gemv(cublasHandle_t h, cublasOperation_t t, int64_t m, int64_t n,
                           const double* alpha, const double* a, int64_t lda, const double* x,
                           const double* beta, double* y) {
  return cublasDgemv_64(h, t, m, n, alpha, a, lda, x, 1, beta, y, 1);
}
inline cublasStatus_t geam_t(cublasHandle_t h, int64_t m, int64_t n, const float* a, int64_t lda,
                             float* c, int64_t ldc) {  // c (m x n) = a^T, column-major
  const float one = 1, zero = 0;
  return cublasSgeam_64(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, &one, a, lda, &zero, c, ldc, c, ldc);
}
inline cublasStatus_t geam_t(cublasHandle_t h, int64_t m, int64_t n, const double* a, int64_t lda,
                             double* c, int64_t ldc) {
  const double one = 1, zero = 0;
  return cublasDgeam_64(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, &one, a, lda, &zero, c, ldc, c, ldc);
}

}  // namespace svdzip::cuda::detail
