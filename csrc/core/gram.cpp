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

// syrk filled the column-major upper triangle, which is the row-major lower one:
// copy it onto the row-major upper triangle so acc is a full symmetric matrix again.
template <typename T>
void mirror_lower_to_upper(T* acc, index_t n) {
  for (index_t r = 0; r < n; ++r)
    for (index_t c = r + 1; c < n; ++c) acc[r * n + c] = acc[c * n + r];
}

// acc += alpha * x^T x for x of the same precision as acc, one syrk per chunk.
template <typename T>
void gram_same_precision(T* acc, const T* x, index_t rows, index_t n, index_t ldx, double alpha,
                         index_t chunk_rows) {
  check_gram_args(rows, n, ldx, chunk_rows);
  const int ni = detail::to_int(n, "n"), ld = detail::to_int(ldx, "ldx");
  for (index_t r0 = 0; r0 < rows; r0 += chunk_rows) {
    const int k = detail::to_int(std::min(chunk_rows, rows - r0), "chunk_rows");
    // Column-major view of the row-major chunk is x^T (n x k); syrk 'N' gives x^T x.
    detail::syrk("U", "N", ni, k, static_cast<T>(alpha), x + r0 * ldx, ld, T(1), acc, ni);
  }
  mirror_lower_to_upper(acc, n);
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
    detail::syrk("U", "N", detail::to_int(n, "n"), detail::to_int(k, "chunk_rows"), alpha,
                 wide.data(), detail::to_int(n, "n"), 1.0, acc, detail::to_int(n, "n"));
  }
  mirror_lower_to_upper(acc, n);
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
