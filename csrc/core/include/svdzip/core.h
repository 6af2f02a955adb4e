// svdzip core: the numerics of low-rank compression on plain buffers.
//
// No torch types here: a C++ inference stack links `svdzip::core` and passes raw
// pointers, sizes and row strides. All matrices are row-major (C order), the layout
// torch and numpy use, so a contiguous tensor's data pointer can be passed as is.
// Every function throws svdzip::core::Error with the offending value in the message.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace svdzip::core {

using index_t = std::int64_t;

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// acc (n x n, symmetric) += alpha * x^T x, where x is `rows` x n with row stride ldx.
// Streams over chunks of `chunk_rows` rows and updates one triangle with BLAS syrk,
// then mirrors it: half the flops of a full GEMM. `acc` must be symmetric on entry.
// The float->double overload widens each chunk so long sums keep fp64 accuracy.
void gram_accumulate(float* acc, const float* x, index_t rows, index_t n, index_t ldx,
                     double alpha, index_t chunk_rows = 2048);
void gram_accumulate(double* acc, const double* x, index_t rows, index_t n, index_t ldx,
                     double alpha, index_t chunk_rows = 2048);
void gram_accumulate(double* acc, const float* x, index_t rows, index_t n, index_t ldx,
                     double alpha, index_t chunk_rows = 2048);

// The share of gram_accumulate (one chunk, same precision) that owns rows [r0, r1) of acc:
// it updates those rows' part of the lower triangle and their mirror image in the upper
// one. Calls with disjoint row ranges touch disjoint entries, so a caller with its own
// thread pool can run them concurrently, each on a single-threaded BLAS; the work of
// rows [r0, r1) grows as r1^2 - r0^2 (equal shares: r_p = n * sqrt(p / P)).
void gram_accumulate_rows(float* acc, const float* x, index_t rows, index_t n, index_t ldx,
                          double alpha, index_t r0, index_t r1);
void gram_accumulate_rows(double* acc, const double* x, index_t rows, index_t n, index_t ldx,
                          double alpha, index_t r0, index_t r1);

// Cross-Gram of two streams at the same tokens: acc (n x n) += alpha * x^T y for x and y
// (rows x n, row strides ldx, ldy), e.g. a layer's dense inputs x and the compressed model's
// inputs y (the error-compensated objective's C = X X~^T). Only rows [r0, r1) of acc are
// written (one GEMM), so calls with disjoint row ranges can run concurrently; equal-width
// ranges are equal work. acc is not symmetric in general.
void cross_gram_accumulate_rows(float* acc, const float* x, const float* y, index_t rows,
                                index_t n, index_t ldx, index_t ldy, double alpha, index_t r0,
                                index_t r1);
void cross_gram_accumulate_rows(double* acc, const double* x, const double* y, index_t rows,
                                index_t n, index_t ldx, index_t ldy, double alpha, index_t r0,
                                index_t r1);

// Per-channel ASVD statistics of x (rows x n): acc[j] += alpha * sum_i |x_ij|  and
// acc[j] = max(acc[j], max_i |x_ij|).  The caller divides by the token count for a mean.
template <typename Acc, typename T>
void abs_sum_accumulate(Acc* acc, const T* x, index_t rows, index_t n, index_t ldx, double alpha);
template <typename Acc, typename T>
void abs_max_accumulate(Acc* acc, const T* x, index_t rows, index_t n, index_t ldx);

// Truncated SVD of `batch` matrices a[b] (m x n, contiguous): a ~= u diag(s) vh with
// u (m x k), s (k, descending), vh (k x n). 1 <= k <= min(m, n). LAPACK gesdd.
// Errors name the failing matrix as first_index + its place in this batch (so a caller
// that splits a batch across threads keeps the caller's numbering).
template <typename T>
void batched_svd(const T* a, index_t batch, index_t m, index_t n, index_t k, T* u, T* s, T* vh,
                 index_t first_index = 0);

// Column-pivoted QR of a (m x n, row-major): a[:, perm] = Q R with |R_00| >= |R_11| >= ...
// (LAPACK geqp3: Householder with column-norm downdating; Q is not formed). Writes R
// (min(m, n) x n, row-major, zero below the diagonal, columns in pivot order) and perm (n).
// The leading k pivots are the columns of an interpolative decomposition of rank k:
// a ~= a[:, perm[:k]] Z, Z[:, perm] = R11^-1 [R11 R12] (svdzip/methods/interpolative.py).
template <typename T>
void column_pivoted_qr(const T* a, index_t m, index_t n, T* r, index_t* perm);

// How a whitening factor was obtained; the pipeline reports it per module.
enum class WhiteningPath : int { Cholesky = 0, CholeskyJitter = 1, Eigen = 2 };

struct WhiteningInfo {
  WhiteningPath path = WhiteningPath::Cholesky;
  double shift = 0.0;     // jitter added to the diagonal, or the eigenvalue floor (Eigen)
  index_t clamped = 0;    // eigenvalues raised to the floor (Eigen only)
};

// factor (n x n) with factor * factor^T ~= g for a symmetric PSD Gram g.
// Tries Cholesky (factor lower-triangular); on failure retries with a diagonal shift of
// jitter * 10^i * mean(diag g), i = 0..4; then falls back to the eigen factor
// Q diag(sqrt(max(lambda, floor))) with floor = max(jitter, eps) * lambda_max.
// Throws on non-finite entries or a zero Gram: never returns NaN.
template <typename T>
WhiteningInfo whitening_factor(const T* g, index_t n, double jitter, T* factor);

// y (rows x m) = (x B^T) A^T + bias, with x (rows x n, row stride ldx), B (k x n),
// A (m x k), bias (m) or nullptr. `tmp` holds rows x k values (x B^T); W = A B is never formed.
template <typename T>
struct nondeduced { using type = T; };  // lets callers pass nullptr for bias
template <typename T>
void lowrank_linear(const T* x, index_t rows, index_t n, index_t ldx, const T* a, index_t m,
                    index_t k, const T* b, const typename nondeduced<T>::type* bias, T* y, T* tmp);

// Compiler, BLAS/LAPACK and version the core was built with.
std::string build_info();

}  // namespace svdzip::core
