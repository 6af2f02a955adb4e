// Low-rank linear layer y = (x B^T) A^T + bias with two GEMMs and a rows x k buffer.
#include <algorithm>

#include "blas.h"

namespace svdzip::core {

template <typename T>
void lowrank_linear(const T* x, index_t rows, index_t n, index_t ldx, const T* a, index_t m,
                    index_t k, const T* b, const typename nondeduced<T>::type* bias, T* y,
                    T* tmp) {
  if (rows < 0 || n <= 0 || m <= 0 || k <= 0 || ldx < n)
    throw Error("lowrank_linear: bad shape rows=" + std::to_string(rows) + " n=" +
                std::to_string(n) + " m=" + std::to_string(m) + " k=" + std::to_string(k) +
                " ldx=" + std::to_string(ldx));
  if (rows == 0) return;
  const int R = detail::to_int(rows, "rows"), N = detail::to_int(n, "n"),
            M = detail::to_int(m, "m"), K = detail::to_int(k, "k"), LDX = detail::to_int(ldx, "ldx");
  // Column-major views: x is x^T (n x rows), B is B^T (n x k), A is A^T (k x m).
  // tmp^T (k x rows) = B x^T, then y^T (m x rows) = A tmp^T (+ bias broadcast per column).
  T beta = T(0);
  if (bias != nullptr) {
    for (index_t r = 0; r < rows; ++r) std::copy(bias, bias + m, y + r * m);
    beta = T(1);
  }
  if (rows == 1) {  // decode: GEMV is memory-bound and OpenBLAS's 1-column GEMM is not
    detail::gemv("T", N, K, T(1), b, N, x, T(0), tmp);
    detail::gemv("T", K, M, T(1), a, K, tmp, beta, y);
    return;
  }
  detail::gemm("T", "N", K, R, N, T(1), b, N, x, LDX, T(0), tmp, K);
  detail::gemm("T", "N", M, R, K, T(1), a, K, tmp, K, beta, y, M);
}

template void lowrank_linear<float>(const float*, index_t, index_t, index_t, const float*, index_t,
                                    index_t, const float*, const float*, float*, float*);
template void lowrank_linear<double>(const double*, index_t, index_t, index_t, const double*,
                                     index_t, index_t, const double*, const double*, double*,
                                     double*);

std::string build_info() {
  std::string s = "svdzip core " SVDZIP_VERSION "; compiler ";
#if defined(__clang__)
  s += "clang " __clang_version__;
#elif defined(__GNUC__)
  s += "gcc " __VERSION__;
#else
  s += "unknown";
#endif
  s += "; blas " SVDZIP_BLAS_NAME;
  return s;
}

}  // namespace svdzip::core
