// Fortran BLAS/LAPACK entry points (LP64). Declared here rather than taken from a vendor
// header so that any conforming library (OpenBLAS, MKL, reference LAPACK) links.
// Row-major callers pass their buffers as the transposed column-major matrix.
#pragma once

#include <climits>
#include <string>

#include "svdzip/core.h"

extern "C" {
void ssyrk_(const char* uplo, const char* trans, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* beta, float* c, const int* ldc);
void dsyrk_(const char* uplo, const char* trans, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* beta, double* c, const int* ldc);
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc);
void sgemv_(const char* t, const int* m, const int* n, const float* alpha, const float* a,
            const int* lda, const float* x, const int* incx, const float* beta, float* y,
            const int* incy);
void dgemv_(const char* t, const int* m, const int* n, const double* alpha, const double* a,
            const int* lda, const double* x, const int* incx, const double* beta, double* y,
            const int* incy);
void sgesdd_(const char* jobz, const int* m, const int* n, float* a, const int* lda, float* s,
             float* u, const int* ldu, float* vt, const int* ldvt, float* work, const int* lwork,
             int* iwork, int* info);
void dgesdd_(const char* jobz, const int* m, const int* n, double* a, const int* lda, double* s,
             double* u, const int* ldu, double* vt, const int* ldvt, double* work,
             const int* lwork, int* iwork, int* info);
void sgesvd_(const char* jobu, const char* jobvt, const int* m, const int* n, float* a,
             const int* lda, float* s, float* u, const int* ldu, float* vt, const int* ldvt,
             float* work, const int* lwork, int* info);
void dgesvd_(const char* jobu, const char* jobvt, const int* m, const int* n, double* a,
             const int* lda, double* s, double* u, const int* ldu, double* vt, const int* ldvt,
             double* work, const int* lwork, int* info);
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info);
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info);
void ssyevd_(const char* jobz, const char* uplo, const int* n, float* a, const int* lda, float* w,
             float* work, const int* lwork, int* iwork, const int* liwork, int* info);
void dsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda,
             double* w, double* work, const int* lwork, int* iwork, const int* liwork, int* info);
void sgeqp3_(const int* m, const int* n, float* a, const int* lda, int* jpvt, float* tau,
             float* work, const int* lwork, int* info);
void dgeqp3_(const int* m, const int* n, double* a, const int* lda, int* jpvt, double* tau,
             double* work, const int* lwork, int* info);
}

namespace svdzip::core::detail {

// LAPACK takes 32-bit sizes: reject what does not fit instead of truncating silently.
inline int to_int(index_t v, const char* what) {
  if (v < 0 || v > INT_MAX)
    throw Error(std::string(what) + " = " + std::to_string(v) + " is outside [0, INT_MAX]");
  return static_cast<int>(v);
}

// Overloads so templates can call one name for float and double.
inline void syrk(const char* uplo, const char* trans, int n, int k, float alpha, const float* a,
                 int lda, float beta, float* c, int ldc) {
  ssyrk_(uplo, trans, &n, &k, &alpha, a, &lda, &beta, c, &ldc);
}
inline void syrk(const char* uplo, const char* trans, int n, int k, double alpha, const double* a,
                 int lda, double beta, double* c, int ldc) {
  dsyrk_(uplo, trans, &n, &k, &alpha, a, &lda, &beta, c, &ldc);
}
inline void gemm(const char* ta, const char* tb, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  sgemm_(ta, tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void gemm(const char* ta, const char* tb, int m, int n, int k, double alpha,
                 const double* a, int lda, const double* b, int ldb, double beta, double* c,
                 int ldc) {
  dgemm_(ta, tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void gemv(const char* t, int m, int n, float alpha, const float* a, int lda,
                 const float* x, float beta, float* y) {
  const int one = 1;
  sgemv_(t, &m, &n, &alpha, a, &lda, x, &one, &beta, y, &one);
}
inline void gemv(const char* t, int m, int n, double alpha, const double* a, int lda,
                 const double* x, double beta, double* y) {
  const int one = 1;
  dgemv_(t, &m, &n, &alpha, a, &lda, x, &one, &beta, y, &one);
}
inline void gesdd(const char* jobz, int m, int n, float* a, int lda, float* s, float* u, int ldu,
                  float* vt, int ldvt, float* work, int lwork, int* iwork, int* info) {
  sgesdd_(jobz, &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, iwork, info);
}
inline void gesdd(const char* jobz, int m, int n, double* a, int lda, double* s, double* u,
                  int ldu, double* vt, int ldvt, double* work, int lwork, int* iwork, int* info) {
  dgesdd_(jobz, &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, iwork, info);
}
inline void gesvd(int m, int n, float* a, int lda, float* s, float* u, int ldu, float* vt,
                  int ldvt, float* work, int lwork, int* info) {
  sgesvd_("S", "S", &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, info);
}
inline void gesvd(int m, int n, double* a, int lda, double* s, double* u, int ldu, double* vt,
                  int ldvt, double* work, int lwork, int* info) {
  dgesvd_("S", "S", &m, &n, a, &lda, s, u, &ldu, vt, &ldvt, work, &lwork, info);
}
inline void potrf(const char* uplo, int n, float* a, int lda, int* info) {
  spotrf_(uplo, &n, a, &lda, info);
}
inline void potrf(const char* uplo, int n, double* a, int lda, int* info) {
  dpotrf_(uplo, &n, a, &lda, info);
}
inline void syevd(const char* jobz, const char* uplo, int n, float* a, int lda, float* w,
                  float* work, int lwork, int* iwork, int liwork, int* info) {
  ssyevd_(jobz, uplo, &n, a, &lda, w, work, &lwork, iwork, &liwork, info);
}
inline void syevd(const char* jobz, const char* uplo, int n, double* a, int lda, double* w,
                  double* work, int lwork, int* iwork, int liwork, int* info) {
  dsyevd_(jobz, uplo, &n, a, &lda, w, work, &lwork, iwork, &liwork, info);
}

inline void geqp3(int m, int n, float* a, int lda, int* jpvt, float* tau, float* work, int lwork,
                  int* info) {
  sgeqp3_(&m, &n, a, &lda, jpvt, tau, work, &lwork, info);
}
inline void geqp3(int m, int n, double* a, int lda, int* jpvt, double* tau, double* work,
                  int lwork, int* info) {
  dgeqp3_(&m, &n, a, &lda, jpvt, tau, work, &lwork, info);
}

// Throws if any of the `count` values is NaN or infinite, naming the first one found.
template <typename T>
void check_finite(const T* p, index_t rows, index_t cols, index_t ld, const char* what);

}  // namespace svdzip::core::detail
