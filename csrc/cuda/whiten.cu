// Whitening factor on the GPU with the CPU core's contract: potrf, potrf with a growing
// diagonal shift, then the clamped eigen factor from syevd. G is symmetric, so row- and
// column-major views coincide; a column-major 'U' factor is the row-major lower L.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common.cuh"

namespace svdzip::cuda {
namespace {

constexpr int kJitterTries = 5;  // same as the CPU core

#define SVDZIP_WHITEN_OVERLOADS(T, P)                                                          \
  cusolverStatus_t potrf_size(cusolverDnHandle_t h, int n, T* a, int* lwork) {                 \
    return cusolverDn##P##potrf_bufferSize(h, CUBLAS_FILL_MODE_UPPER, n, a, n, lwork);          \
  }                                                                                            \
  cusolverStatus_t potrf(cusolverDnHandle_t h, int n, T* a, T* w, int lwork, int* info) {      \
    return cusolverDn##P##potrf(h, CUBLAS_FILL_MODE_UPPER, n, a, n, w, lwork, info);            \
  }                                                                                            \
  cusolverStatus_t syevd_size(cusolverDnHandle_t h, int n, const T* a, const T* w, int* lwork) { \
    return cusolverDn##P##syevd_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, \
                                           n, a, n, w, lwork);                                 \
  }                                                                                            \
  cusolverStatus_t syevd(cusolverDnHandle_t h, int n, T* a, T* w, T* work, int lwork, int* info) { \
    return cusolverDn##P##syevd(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, n, a, n,   \
                                w, work, lwork, info);                                         \
  }
SVDZIP_WHITEN_OVERLOADS(float, S)
SVDZIP_WHITEN_OVERLOADS(double, D)
#undef SVDZIP_WHITEN_OVERLOADS

template <typename T>
__global__ void copy_shift_diag(const T* g, index_t n, T shift, T* f) {
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < n * n;
       i += index_t(gridDim.x) * blockDim.x)
    f[i] = g[i] + ((i / n == i % n) ? shift : T(0));
}

template <typename T>
__global__ void zero_row_major_upper(T* f, index_t n) {
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < n * n;
       i += index_t(gridDim.x) * blockDim.x)
    if (i % n > i / n) f[i] = T(0);
}

// f[i][j] = Q(i, j) * sqrt(max(lambda_j, floor)); Q column-major (column j at q + j n).
template <typename T>
__global__ void scale_eigvecs(const T* q, const T* w, index_t n, double floor, T* f) {
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < n * n;
       i += index_t(gridDim.x) * blockDim.x) {
    const index_t r = i / n, c = i % n;
    const double lam = fmax(static_cast<double>(w[c]), floor);
    f[i] = q[c * n + r] * static_cast<T>(sqrt(lam));
  }
}

template <typename T>
__global__ void diag_sum(const T* g, index_t n, double* out) {
  // One block: a fixed-order tree reduction, so the trace is deterministic.
  __shared__ double part[256];
  double v = 0;
  for (index_t i = threadIdx.x; i < n; i += blockDim.x) v += static_cast<double>(g[i * n + i]);
  part[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = part[0];
}

template <typename T>
bool try_cholesky(const Context& ctx, const T* g, index_t n, double shift, T* f, T* work,
                  int lwork, int* info) {
  copy_shift_diag<<<detail::blocks_for(n * n, 256), 256, 0, ctx.stream>>>(g, n, T(shift), f);
  detail::check_launch("copy_shift_diag");
  detail::check(potrf(ctx.solver, int(n), f, work, lwork, info), "cusolverDn<t>potrf");
  int host = 0;
  detail::to_host(ctx, &host, info, 1, "potrf info");
  if (host < 0) throw core::Error("whitening_factor: potrf bad argument " + std::to_string(-host));
  if (host > 0) return false;
  zero_row_major_upper<<<detail::blocks_for(n * n, 256), 256, 0, ctx.stream>>>(f, n);
  detail::check_launch("zero_row_major_upper");
  return true;
}

template <typename T>
core::WhiteningInfo eigen_factor(const Context& ctx, Workspace& ws, const T* g, index_t n,
                                 double floor_rel, T* f) {
  T *q = ws.get<T>(n * n), *w = ws.get<T>(n);
  int* info = ws.get<int>(1);
  detail::check(cudaMemcpyAsync(q, g, sizeof(T) * n * n, cudaMemcpyDeviceToDevice, ctx.stream),
                "cudaMemcpyAsync");
  int lwork = 0;
  detail::check(syevd_size(ctx.solver, int(n), q, w, &lwork), "cusolverDn<t>syevd_bufferSize");
  T* work = ws.get<T>(std::max(lwork, 1));
  detail::check(syevd(ctx.solver, int(n), q, w, work, lwork, info), "cusolverDn<t>syevd");
  int host_info = 0;
  detail::to_host(ctx, &host_info, info, 1, "syevd info");
  if (host_info != 0)
    throw core::Error("whitening_factor: eigendecomposition failed (syevd info = " +
                      std::to_string(host_info) + ")");
  std::vector<T> lam(static_cast<size_t>(n));
  detail::to_host(ctx, lam.data(), w, n, "eigenvalues");
  const double lmax = double(lam[n - 1]);  // ascending
  if (!(lmax > 0)) throw core::Error("whitening_factor: Gram has no positive eigenvalue");
  core::WhiteningInfo out{core::WhiteningPath::Eigen, floor_rel * lmax, 0};
  for (T v : lam) out.clamped += double(v) < out.shift;
  scale_eigvecs<<<detail::blocks_for(n * n, 256), 256, 0, ctx.stream>>>(q, w, n, out.shift, f);
  detail::check_launch("scale_eigvecs");
  return out;
}

}  // namespace

template <typename T>
core::WhiteningInfo whitening_factor(const Context& ctx, Workspace& ws, const T* g, index_t n,
                                     double jitter, T* factor) {
  if (n <= 0) throw core::Error("whitening_factor: n = " + std::to_string(n) + " must be positive");
  if (!(jitter >= 0) || !std::isfinite(jitter))
    throw core::Error("whitening_factor: jitter = " + std::to_string(jitter) + " must be >= 0");
  detail::to_int(n, "n");
  const index_t bad = detail::count_nonfinite(ctx, ws, g, n, n, n);
  if (bad)
    throw core::Error("whitening_factor Gram has " + std::to_string(bad) + " non-finite values");
  double* trace_dev = ws.get<double>(1);
  diag_sum<<<1, 256, 0, ctx.stream>>>(g, n, trace_dev);
  detail::check_launch("diag_sum");
  double trace = 0;
  detail::to_host(ctx, &trace, trace_dev, 1, "Gram trace");
  const double mean_diag = trace / double(n);
  if (!(mean_diag > 0))
    throw core::Error("whitening_factor: Gram mean diagonal = " + std::to_string(mean_diag) +
                      " (no signal: all inputs zero?)");

  int lwork = 0, *info = ws.get<int>(1);
  detail::check(potrf_size(ctx.solver, int(n), factor, &lwork), "cusolverDn<t>potrf_bufferSize");
  T* work = ws.get<T>(std::max(lwork, 1));
  if (try_cholesky(ctx, g, n, 0.0, factor, work, lwork, info)) return {core::WhiteningPath::Cholesky, 0.0, 0};
  for (int i = 0; jitter > 0 && i < kJitterTries; ++i) {
    const double shift = jitter * std::pow(10.0, i) * mean_diag;
    if (try_cholesky(ctx, g, n, shift, factor, work, lwork, info))
      return {core::WhiteningPath::CholeskyJitter, shift, 0};
  }
  const double eps = std::numeric_limits<T>::epsilon() * double(n);
  return eigen_factor(ctx, ws, g, n, std::max(jitter, eps), factor);
}

template core::WhiteningInfo whitening_factor<float>(const Context&, Workspace&, const float*,
                                                     index_t, double, float*);
template core::WhiteningInfo whitening_factor<double>(const Context&, Workspace&, const double*,
                                                      index_t, double, double*);

}  // namespace svdzip::cuda
