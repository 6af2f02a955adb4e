// Truncated batched SVD with cuSOLVER. Row-major A (m x n) is the column-major n x m matrix
// M = A^T; with M = U S V^T we get A = V S U^T, so A's left vectors are M's right ones and
// vh (k x n, row-major) is exactly the first k columns of U: no copy-back transpose for it.
#include <algorithm>
#include <string>
#include <vector>

#include "common.cuh"

namespace svdzip::cuda {
namespace {

constexpr int kBatchedMaxDim = 32;  // gesvdjBatched only takes matrices up to 32 x 32

// Overloads of the cuSOLVER SVD routines for float and double.
#define SVDZIP_SVD_OVERLOADS(T, P)                                                                \
  cusolverStatus_t gesvdj_size(cusolverDnHandle_t h, int m, int n, const T* a, const T* s,        \
                               const T* u, const T* v, int* lwork, gesvdjInfo_t p) {              \
    return cusolverDn##P##gesvdj_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, a, m, s, u, m,   \
                                            v, n, lwork, p);                                       \
  }                                                                                               \
  cusolverStatus_t gesvdj(cusolverDnHandle_t h, int m, int n, T* a, T* s, T* u, T* v, T* w,      \
                          int lwork, int* info, gesvdjInfo_t p) {                                 \
    return cusolverDn##P##gesvdj(h, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, a, m, s, u, m, v, n, w,     \
                                 lwork, info, p);                                                 \
  }                                                                                               \
  cusolverStatus_t gesvdj_batched_size(cusolverDnHandle_t h, int m, int n, const T* a,           \
                                       const T* s, const T* u, const T* v, int* lwork,            \
                                       gesvdjInfo_t p, int batch) {                               \
    return cusolverDn##P##gesvdjBatched_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, m, n, a, m, s, u,  \
                                                   m, v, n, lwork, p, batch);                     \
  }                                                                                               \
  cusolverStatus_t gesvdj_batched(cusolverDnHandle_t h, int m, int n, T* a, T* s, T* u, T* v,    \
                                  T* w, int lwork, int* info, gesvdjInfo_t p, int batch) {        \
    return cusolverDn##P##gesvdjBatched(h, CUSOLVER_EIG_MODE_VECTOR, m, n, a, m, s, u, m, v, n,    \
                                        w, lwork, info, p, batch);                                \
  }                                                                                               \
  cusolverStatus_t gesvd_size(cusolverDnHandle_t h, int m, int n, int* lwork, T*) {              \
    return cusolverDn##P##gesvd_bufferSize(h, m, n, lwork);                                       \
  }                                                                                               \
  cusolverStatus_t gesvd(cusolverDnHandle_t h, int m, int n, T* a, T* s, T* u, T* vt, T* w,      \
                         int lwork, T* rwork, int* info) {                                        \
    return cusolverDn##P##gesvd(h, 'S', 'S', m, n, a, m, s, u, m, vt, n, w, lwork, rwork, info);   \
  }
SVDZIP_SVD_OVERLOADS(float, S)
SVDZIP_SVD_OVERLOADS(double, D)
#undef SVDZIP_SVD_OVERLOADS

struct JacobiParams {
  gesvdjInfo_t p = nullptr;
  JacobiParams() {
    detail::check(cusolverDnCreateGesvdjInfo(&p), "cusolverDnCreateGesvdjInfo");
    cusolverDnXgesvdjSetSortEig(p, 1);  // descending, like LAPACK
  }
  ~JacobiParams() { cusolverDnDestroyGesvdjInfo(p); }
  JacobiParams(const JacobiParams&) = delete;
  JacobiParams& operator=(const JacobiParams&) = delete;
};

template <typename T>
void copy_d2d(const Context& ctx, T* dst, const T* src, index_t count) {
  detail::check(cudaMemcpyAsync(dst, src, sizeof(T) * count, cudaMemcpyDeviceToDevice, ctx.stream),
                "cudaMemcpyAsync");
}

// From M = U S V^T (U: n x p, ld n; V: m x p, ld ldv) to A's rank-k outputs.
template <typename T>
void emit_from_mt(const Context& ctx, const T* U, const T* S, const T* V, index_t ldv, index_t m,
                  index_t n, index_t k, T* u, T* s, T* vh) {
  detail::check(detail::geam_t(ctx.blas, k, m, V, ldv, u, k), "cublas<t>geam (u)");
  copy_d2d(ctx, vh, U, k * n);
  copy_d2d(ctx, s, S, k);
}

// QR-based gesvd on the tall orientation: the fallback when Jacobi did not converge.
template <typename T>
void svd_qr(const Context& ctx, Workspace& ws, const T* a, index_t m, index_t n, index_t k, T* u,
            T* s, T* vh) {
  const index_t p = std::min(m, n);
  const bool m_tall = n >= m;  // column-major M = A^T is n x m: tall when n >= m
  const index_t R = m_tall ? n : m, C = m_tall ? m : n;
  T* t = ws.get<T>(R * C);
  if (m_tall) copy_d2d(ctx, t, a, R * C);
  else detail::check(detail::geam_t(ctx.blas, m, n, a, n, t, m), "cublas<t>geam (A)");
  T *Uq = ws.get<T>(R * C), *VT = ws.get<T>(C * C), *S = ws.get<T>(p), *rwork = ws.get<T>(p);
  int lwork = 0, *info = ws.get<int>(1);
  detail::check(gesvd_size(ctx.solver, int(R), int(C), &lwork, t), "cusolverDn<t>gesvd_bufferSize");
  T* work = ws.get<T>(std::max(lwork, 1));
  detail::check(gesvd(ctx.solver, int(R), int(C), t, S, Uq, VT, work, lwork, rwork, info),
                "cusolverDn<t>gesvd");
  int host_info = 0;
  detail::to_host(ctx, &host_info, info, 1, "gesvd info");
  if (host_info != 0)
    throw core::Error("batched_svd: gesvd did not converge on a " + std::to_string(m) + " x " +
                      std::to_string(n) + " matrix (info = " + std::to_string(host_info) + ")");
  copy_d2d(ctx, s, S, k);
  if (m_tall) {  // M = Uq S VT: u[i][j] = VT(j, i), vh = first k columns of Uq
    detail::check(cudaMemcpy2DAsync(u, sizeof(T) * k, VT, sizeof(T) * C, sizeof(T) * k, m,
                                    cudaMemcpyDeviceToDevice, ctx.stream), "cudaMemcpy2DAsync");
    copy_d2d(ctx, vh, Uq, k * n);
  } else {  // t = A column-major: A = Uq S VT
    detail::check(detail::geam_t(ctx.blas, k, m, Uq, m, u, k), "cublas<t>geam (u)");
    detail::check(detail::geam_t(ctx.blas, n, k, VT, n, vh, n), "cublas<t>geam (vh)");
  }
}

}  // namespace

template <typename T>
void batched_svd(const Context& ctx, Workspace& ws, const T* a, index_t batch, index_t m,
                 index_t n, index_t k, T* u, T* s, T* vh) {
  if (batch <= 0) return;
  if (m <= 0 || n <= 0 || k < 1 || k > std::min(m, n))
    throw core::Error("batched_svd: k = " + std::to_string(k) + " must be in [1, min(m, n)] for " +
                      std::to_string(m) + " x " + std::to_string(n) + " matrices");
  const index_t bad = detail::count_nonfinite(ctx, ws, a, batch * m, n, n);
  if (bad) throw core::Error("batched_svd: A has " + std::to_string(bad) + " non-finite entries");
  const index_t p = std::min(m, n), R = n, C = m;  // M = A^T is R x C column-major
  const int Ri = detail::to_int(R, "n"), Ci = detail::to_int(C, "m");
  JacobiParams params;
  int* info = ws.get<int>(batch);
  int lwork = 0;
  std::vector<index_t> failed;
  std::vector<int> host_info(static_cast<size_t>(batch));

  if (m <= kBatchedMaxDim && n <= kBatchedMaxDim) {
    // One launch for the whole batch; U and V come back full (R x R, C x C).
    const int bi = detail::to_int(batch, "batch");
    T *M = ws.get<T>(batch * R * C), *S = ws.get<T>(batch * p);
    T *U = ws.get<T>(batch * R * R), *V = ws.get<T>(batch * C * C);
    copy_d2d(ctx, M, a, batch * R * C);
    detail::check(gesvdj_batched_size(ctx.solver, Ri, Ci, M, S, U, V, &lwork, params.p, bi),
                  "cusolverDn<t>gesvdjBatched_bufferSize");
    T* work = ws.get<T>(std::max(lwork, 1));
    detail::check(gesvdj_batched(ctx.solver, Ri, Ci, M, S, U, V, work, lwork, info, params.p, bi),
                  "cusolverDn<t>gesvdjBatched");
    for (index_t b = 0; b < batch; ++b)
      emit_from_mt(ctx, U + b * R * R, S + b * p, V + b * C * C, C, m, n, k, u + b * m * k,
                   s + b * k, vh + b * k * n);
  } else {
    // One economy Jacobi SVD per matrix, all queued on the stream with shared buffers.
    T *M = ws.get<T>(R * C), *S = ws.get<T>(p), *U = ws.get<T>(R * p), *V = ws.get<T>(C * p);
    detail::check(gesvdj_size(ctx.solver, Ri, Ci, M, S, U, V, &lwork, params.p),
                  "cusolverDn<t>gesvdj_bufferSize");
    T* work = ws.get<T>(std::max(lwork, 1));
    for (index_t b = 0; b < batch; ++b) {
      copy_d2d(ctx, M, a + b * m * n, R * C);
      detail::check(gesvdj(ctx.solver, Ri, Ci, M, S, U, V, work, lwork, info + b, params.p),
                    "cusolverDn<t>gesvdj");
      emit_from_mt(ctx, U, S, V, C, m, n, k, u + b * m * k, s + b * k, vh + b * k * n);
    }
  }
  detail::to_host(ctx, host_info.data(), info, batch, "gesvdj info");
  for (index_t b = 0; b < batch; ++b) {
    if (host_info[b] < 0)
      throw core::Error("batched_svd: gesvdj rejected argument " + std::to_string(-host_info[b]));
    if (host_info[b] > 0) failed.push_back(b);  // min(m, n) + 1: Jacobi did not converge
  }
  for (index_t b : failed)
    svd_qr(ctx, ws, a + b * m * n, m, n, k, u + b * m * k, s + b * k, vh + b * k * n);
}

template void batched_svd<float>(const Context&, Workspace&, const float*, index_t, index_t,
                                 index_t, index_t, float*, float*, float*);
template void batched_svd<double>(const Context&, Workspace&, const double*, index_t, index_t,
                                  index_t, index_t, double*, double*, double*);

}  // namespace svdzip::cuda
