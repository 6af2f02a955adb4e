// Column-pivoted QR with LAPACK geqp3: the column selection of the interpolative decomposition.
#include <algorithm>
#include <vector>

#include "blas.h"

namespace svdzip::core {

template <typename T>
void column_pivoted_qr(const T* a, index_t m, index_t n, T* r, index_t* perm) {
  if (m <= 0 || n <= 0)
    throw Error("column_pivoted_qr: bad shape m=" + std::to_string(m) + " n=" + std::to_string(n));
  detail::check_finite(a, m, n, n, "column_pivoted_qr: input");
  const int M = detail::to_int(m, "rows"), N = detail::to_int(n, "cols");
  const index_t mn = std::min(m, n);
  // geqp3 pivots columns of a column-major matrix: copy the row-major buffer transposed.
  std::vector<T> work_a(static_cast<size_t>(m * n)), tau(static_cast<size_t>(mn));
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) work_a[i + j * m] = a[i * n + j];
  std::vector<int> jpvt(static_cast<size_t>(n), 0);  // 0: every column is free to move
  int info = 0;
  T query;
  detail::geqp3(M, N, work_a.data(), M, jpvt.data(), tau.data(), &query, -1, &info);
  std::vector<T> work(static_cast<size_t>(query) + 1);
  detail::geqp3(M, N, work_a.data(), M, jpvt.data(), tau.data(), work.data(),
                static_cast<int>(work.size()), &info);
  if (info != 0)
    throw Error("column_pivoted_qr: geqp3 failed (info = " + std::to_string(info) + ")");
  for (index_t i = 0; i < mn; ++i)
    for (index_t j = 0; j < n; ++j) r[i * n + j] = j >= i ? work_a[i + j * m] : T(0);
  for (index_t j = 0; j < n; ++j) perm[j] = jpvt[j] - 1;  // Fortran's 1-based column numbers
}

template void column_pivoted_qr<float>(const float*, index_t, index_t, float*, index_t*);
template void column_pivoted_qr<double>(const double*, index_t, index_t, double*, index_t*);

}  // namespace svdzip::core
