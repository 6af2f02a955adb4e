// Streaming Gram accumulation and per-channel activation statistics.
#include <algorithm>
#include <cmath>
#include <vector>

#include "blas.h"

namespace svdzip::core {
namespace {

void check_gram_args(index_t rows, index_t n, index_t ldx, index_t chunk_rows) {
  if (n <= 0) throw Error("gram_accumulate: n = " + std::to_string(n) + " must be positive");
  if (rows < 0) throw Error("gram_accumulate: rows = " + std::to_string(rows) + " is negative");
  if (ldx < n)
    throw Error("gram_accumulate: row stride ldx = " + std::to_string(ldx) + " < n = " +
                std::to_string(n));
  if (chunk_rows <= 0)
    throw Error("gram_accumulate: chunk_rows = " + std::to_string(chunk_rows) +
                " must be positive");
}

void check_slab_args(index_t rows, index_t n, index_t ldx, index_t r0, index_t r1) {
  check_gram_args(rows, n, ldx, 1);
  if (r0 < 0 || r1 < r0 || r1 > n)
    throw Error("gram_accumulate_rows: rows [" + std::to_string(r0) + ", " + std::to_string(r1) +
                ") are not inside [0, n = " + std::to_string(n) + "]");
}

// acc's row-major lower triangle is BLAS's column-major upper one. A slab = rows [r0, r1) of
// the row-major lower triangle: syrk on its diagonal block, one GEMM for the rectangle left
// of it, then its mirror image onto columns [r0, r1) of the upper triangle. Slabs with
// disjoint row ranges read and write disjoint entries.
template <typename T>
void gram_slab(T* acc, const T* x, index_t rows, index_t n, index_t ldx, double alpha,
               index_t r0, index_t r1) {
  const int w = detail::to_int(r1 - r0, "slab width"), k = detail::to_int(rows, "rows"),
            left = detail::to_int(r0, "r0"), ni = detail::to_int(n, "n"),
            ld = detail::to_int(ldx, "ldx");
  if (w == 0 || k == 0) return;
  const T a = static_cast<T>(alpha);
  // Column-major view of the row-major x is x^T (n x rows); syrk 'N' gives x^T x.
  detail::syrk("U", "N", w, k, a, x + r0, ld, T(1), acc + r0 * n + r0, ni);
  if (left > 0)
    detail::gemm("N", "T", left, w, k, a, x, ld, x + r0, ld, T(1), acc + r0 * n, ni);
  for (index_t r = 0; r < r1; ++r)
    for (index_t c = std::max(r + 1, r0); c < r1; ++c) acc[r * n + c] = acc[c * n + r];
}

// acc += alpha * x^T x for x of the same precision as acc, one syrk per chunk.
template <typename T>
void gram_same_precision(T* acc, const T* x, index_t rows, index_t n, index_t ldx, double alpha,
                         index_t chunk_rows) {
  check_gram_args(rows, n, ldx, chunk_rows);
  for (index_t r0 = 0; r0 < rows; r0 += chunk_rows)
    gram_slab(acc, x + r0 * ldx, std::min(chunk_rows, rows - r0), n, ldx, alpha, 0, n);
}

}  // namespace

void gram_accumulate(float* acc, const float* x, index_t rows, index_t n, index_t ldx,
                     double alpha, index_t chunk_rows) {
  gram_same_precision(acc, x, rows, n, ldx, alpha, chunk_rows);
}

void gram_accumulate(double* acc, const double* x, index_t rows, index_t n, index_t ldx,
                     double alpha, index_t chunk_rows) {
  gram_same_precision(acc, x, rows, n, ldx, alpha, chunk_rows);
}

void gram_accumulate(double* acc, const float* x, index_t rows, index_t n, index_t ldx,
                     double alpha, index_t chunk_rows) {
  check_gram_args(rows, n, ldx, chunk_rows);
  const index_t chunk = std::min(chunk_rows, std::max<index_t>(rows, 1));
  std::vector<double> wide(static_cast<size_t>(chunk * n));
  for (index_t r0 = 0; r0 < rows; r0 += chunk) {
    const index_t k = std::min(chunk, rows - r0);
    for (index_t i = 0; i < k; ++i)
      std::copy(x + (r0 + i) * ldx, x + (r0 + i) * ldx + n, wide.data() + i * n);
    gram_slab(acc, wide.data(), k, n, n, alpha, 0, n);
  }
}

void gram_accumulate_rows(float* acc, const float* x, index_t rows, index_t n, index_t ldx,
                          double alpha, index_t r0, index_t r1) {
  check_slab_args(rows, n, ldx, r0, r1);
  gram_slab(acc, x, rows, n, ldx, alpha, r0, r1);
}

void gram_accumulate_rows(double* acc, const double* x, index_t rows, index_t n, index_t ldx,
                          double alpha, index_t r0, index_t r1) {
  check_slab_args(rows, n, ldx, r0, r1);
  gram_slab(acc, x, rows, n, ldx, alpha, r0, r1);
}

namespace {

// Row-major acc rows [r0, r1) = x[:, r0:r1]^T y. In BLAS's column-major view x is X^T (n x
// rows) and acc is acc^T, so columns [r0, r1) of acc^T = y^T x[:, r0:r1] = Yc Xc[r0:r1, :]^T.
template <typename T>
void cross_gram_slab(T* acc, const T* x, const T* y, index_t rows, index_t n, index_t ldx,
                     index_t ldy, double alpha, index_t r0, index_t r1) {
  if (n <= 0) throw Error("cross_gram_accumulate: n = " + std::to_string(n) + " must be positive");
  if (rows < 0) throw Error("cross_gram_accumulate: rows = " + std::to_string(rows) + " is negative");
  if (ldx < n || ldy < n)
    throw Error("cross_gram_accumulate: row strides ldx = " + std::to_string(ldx) + ", ldy = " +
                std::to_string(ldy) + " must be >= n = " + std::to_string(n));
  if (r0 < 0 || r1 < r0 || r1 > n)
    throw Error("cross_gram_accumulate: rows [" + std::to_string(r0) + ", " + std::to_string(r1) +
                ") are not inside [0, n = " + std::to_string(n) + "]");
  const int w = detail::to_int(r1 - r0, "slab width"), k = detail::to_int(rows, "rows"),
            ni = detail::to_int(n, "n");
  if (w == 0 || k == 0) return;
  detail::gemm("N", "T", ni, w, k, static_cast<T>(alpha), y, detail::to_int(ldy, "ldy"), x + r0,
               detail::to_int(ldx, "ldx"), T(1), acc + r0 * n, ni);
}

}  // namespace

void cross_gram_accumulate_rows(float* acc, const float* x, const float* y, index_t rows,
                                index_t n, index_t ldx, index_t ldy, double alpha, index_t r0,
                                index_t r1) {
  cross_gram_slab(acc, x, y, rows, n, ldx, ldy, alpha, r0, r1);
}

void cross_gram_accumulate_rows(double* acc, const double* x, const double* y, index_t rows,
                                index_t n, index_t ldx, index_t ldy, double alpha, index_t r0,
                                index_t r1) {
  cross_gram_slab(acc, x, y, rows, n, ldx, ldy, alpha, r0, r1);
}

template <typename Acc, typename T>
void abs_sum_accumulate(Acc* acc, const T* x, index_t rows, index_t n, index_t ldx,
                        double alpha) {
  if (n <= 0 || rows < 0 || ldx < n)
    throw Error("abs_sum_accumulate: bad shape rows=" + std::to_string(rows) +
                " n=" + std::to_string(n) + " ldx=" + std::to_string(ldx));
  for (index_t i = 0; i < rows; ++i) {
    const T* row = x + i * ldx;
    for (index_t j = 0; j < n; ++j) acc[j] += static_cast<Acc>(alpha * std::abs(double(row[j])));
  }
}

template <typename Acc, typename T>
void abs_max_accumulate(Acc* acc, const T* x, index_t rows, index_t n, index_t ldx) {
  if (n <= 0 || rows < 0 || ldx < n)
    throw Error("abs_max_accumulate: bad shape rows=" + std::to_string(rows) +
                " n=" + std::to_string(n) + " ldx=" + std::to_string(ldx));
  for (index_t i = 0; i < rows; ++i) {
    const T* row = x + i * ldx;
    for (index_t j = 0; j < n; ++j) {
      const Acc v = static_cast<Acc>(std::abs(row[j]));
      // NaN must propagate and stick (so the pipeline can name the module); std::max drops it.
      if (std::isnan(v) || v > acc[j]) acc[j] = v;
    }
  }
}

#define SVDZIP_STATS(Acc, T)                                                                  \
  template void abs_sum_accumulate<Acc, T>(Acc*, const T*, index_t, index_t, index_t, double); \
  template void abs_max_accumulate<Acc, T>(Acc*, const T*, index_t, index_t, index_t);
SVDZIP_STATS(float, float)
SVDZIP_STATS(double, float)
SVDZIP_STATS(double, double)
#undef SVDZIP_STATS

}  // namespace svdzip::core
