// Truncated SVD of a batch of row-major matrices with LAPACK gesdd.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "blas.h"

namespace svdzip::core {

namespace detail {
template <typename T>
void check_finite(const T* p, index_t rows, index_t cols, index_t ld, const char* what) {
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < cols; ++j)
      if (!std::isfinite(p[i * ld + j]))
        throw Error(std::string(what) + " has a non-finite value " +
                    std::to_string(double(p[i * ld + j])) + " at (" + std::to_string(i) + ", " +
                    std::to_string(j) + ")");
}
template void check_finite<float>(const float*, index_t, index_t, index_t, const char*);
template void check_finite<double>(const double*, index_t, index_t, index_t, const char*);
}  // namespace detail

template <typename T>
void batched_svd(const T* a, index_t batch, index_t m, index_t n, index_t k, T* u, T* s, T* vh,
                 index_t first_index) {
  const index_t mn = std::min(m, n);
  // Errors name the matrix by its place in the caller's batch (first_index: where this call's
  // slice of it starts, for callers that hand the core one slice at a time).
  auto matrix_name = [&](index_t b) {
    return "batched_svd: matrix " + std::to_string(first_index + b) + ": ";
  };
  if (batch < 0 || m <= 0 || n <= 0)
    throw Error("batched_svd: bad shape batch=" + std::to_string(batch) +
                " m=" + std::to_string(m) + " n=" + std::to_string(n));
  if (k < 1 || k > mn)
    throw Error("batched_svd: rank k = " + std::to_string(k) + " must be in [1, min(m, n) = " +
                std::to_string(mn) + "]");
  // gesdd is markedly faster on tall column-major input (QR first) than on wide (LQ), so
  // LAPACK always gets the tall orientation: the row-major m x n buffer is already the
  // column-major n x m matrix a^T = V S U^T when n >= m; when m > n we transpose on copy.
  const bool tall = m > n;
  const index_t rows = tall ? m : n, cols = tall ? n : m;  // what LAPACK sees, rows >= cols
  const int M = detail::to_int(rows, "rows"), N = detail::to_int(cols, "cols"),
            K = static_cast<int>(mn);
  std::vector<T> work_a(static_cast<size_t>(m * n)), lu(static_cast<size_t>(rows * mn)),
      lvt(static_cast<size_t>(mn * cols)), ls(static_cast<size_t>(mn));
  std::vector<int> iwork(static_cast<size_t>(8 * mn));
  int info = 0, lwork = -1;
  T query;
  detail::gesdd("S", M, N, work_a.data(), M, ls.data(), lu.data(), M, lvt.data(), K, &query, lwork,
                iwork.data(), &info);
  lwork = static_cast<int>(query) + 1;
  std::vector<T> work(static_cast<size_t>(lwork));
  std::vector<T> gwork;  // gesvd workspace, sized on first use
  for (index_t b = 0; b < batch; ++b) {
    const T* ab = a + b * m * n;
    detail::check_finite(ab, m, n, n, (matrix_name(b) + "input").c_str());
    auto load = [&] {  // LAPACK overwrites its input: (re)load matrix b in LAPACK's layout
      if (tall) {
        for (index_t i = 0; i < m; ++i)
          for (index_t j = 0; j < n; ++j) work_a[i + j * m] = ab[i * n + j];
      } else {
        std::memcpy(work_a.data(), ab, sizeof(T) * m * n);
      }
    };
    load();
    detail::gesdd("S", M, N, work_a.data(), M, ls.data(), lu.data(), M, lvt.data(), K, work.data(),
                  lwork, iwork.data(), &info);
    if (info > 0) {
      // gesdd's divide and conquer fails to converge on some real weight matrices (seen on
      // SmolLM2 residuals); QR-iteration gesvd is slower but robust and equally exact.
      load();
      if (gwork.empty()) {
        T q;
        detail::gesvd(M, N, work_a.data(), M, ls.data(), lu.data(), M, lvt.data(), K, &q, -1, &info);
        gwork.resize(static_cast<size_t>(q) + 1);
      }
      detail::gesvd(M, N, work_a.data(), M, ls.data(), lu.data(), M, lvt.data(), K, gwork.data(),
                    static_cast<int>(gwork.size()), &info);
    }
    if (info != 0)
      throw Error(matrix_name(b) + "gesdd and gesvd failed (info = " + std::to_string(info) +
                  (info > 0 ? ", did not converge)" : ", bad argument)"));
    T* ub = u + b * m * k;
    T* vb = vh + b * k * n;
    std::memcpy(s + b * k, ls.data(), sizeof(T) * k);
    if (tall) {  // a = lu S lvt in column-major: transpose both factors out
      for (index_t i = 0; i < m; ++i)
        for (index_t j = 0; j < k; ++j) ub[i * k + j] = lu[i + j * m];
      for (index_t j = 0; j < k; ++j)
        for (index_t i = 0; i < n; ++i) vb[j * n + i] = lvt[j + i * mn];
    } else {  // a^T = lu S lvt: u[i][j] = lvt(j, i), vh[j][i] = lu(i, j), both contiguous
      for (index_t i = 0; i < m; ++i) std::memcpy(ub + i * k, lvt.data() + i * mn, sizeof(T) * k);
      std::memcpy(vb, lu.data(), sizeof(T) * k * n);
    }
  }
}

template void batched_svd<float>(const float*, index_t, index_t, index_t, index_t, float*, float*,
                                 float*, index_t);
template void batched_svd<double>(const double*, index_t, index_t, index_t, index_t, double*,
                                  double*, double*, index_t);

}  // namespace svdzip::core
