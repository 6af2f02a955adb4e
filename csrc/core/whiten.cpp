// Whitening factor of a Gram matrix: Cholesky, Cholesky with jitter, eigen fallback.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "blas.h"

namespace svdzip::core {
namespace {

constexpr int kJitterTries = 5;

// Cholesky of (g + shift I) into f, lower-triangular row-major. Returns false if not PD.
template <typename T>
bool try_cholesky(const T* g, index_t n, double shift, T* f) {
  std::memcpy(f, g, sizeof(T) * n * n);
  for (index_t i = 0; i < n; ++i) f[i * n + i] += static_cast<T>(shift);
  int info = 0;
  // Column-major 'U' (g = U^T U) lands in the row-major lower triangle as L = U^T.
  detail::potrf("U", detail::to_int(n, "n"), f, static_cast<int>(n), &info);
  if (info < 0) throw Error("whitening_factor: potrf bad argument " + std::to_string(-info));
  if (info > 0) return false;
  for (index_t r = 0; r < n; ++r)
    for (index_t c = r + 1; c < n; ++c) f[r * n + c] = T(0);
  return true;
}

// f = Q diag(sqrt(max(lambda, floor))) from the eigendecomposition g = Q diag(lambda) Q^T.
template <typename T>
WhiteningInfo eigen_factor(const T* g, index_t n, double floor_rel, T* f) {
  const int N = detail::to_int(n, "n");
  std::vector<T> q(g, g + n * n), w(static_cast<size_t>(n));
  int info = 0, lwork = -1, liwork = -1, iquery = 0;
  T query;
  detail::syevd("V", "U", N, q.data(), N, w.data(), &query, lwork, &iquery, liwork, &info);
  lwork = static_cast<int>(query) + 1;
  liwork = iquery;
  std::vector<T> work(static_cast<size_t>(lwork));
  std::vector<int> iwork(static_cast<size_t>(liwork));
  detail::syevd("V", "U", N, q.data(), N, w.data(), work.data(), lwork, iwork.data(), liwork,
                &info);
  if (info != 0)
    throw Error("whitening_factor: eigendecomposition failed (syevd info = " +
                std::to_string(info) + ")");
  const double lmax = double(w[n - 1]);  // ascending order
  if (!(lmax > 0)) throw Error("whitening_factor: Gram has no positive eigenvalue");
  WhiteningInfo out{WhiteningPath::Eigen, floor_rel * lmax, 0};
  // Column-major eigenvectors: column j of Q is row j of the row-major buffer q.
  for (index_t j = 0; j < n; ++j) {
    double lam = double(w[j]);
    if (lam < out.shift) { lam = out.shift; ++out.clamped; }
    const T root = static_cast<T>(std::sqrt(lam));
    for (index_t i = 0; i < n; ++i) f[i * n + j] = q[j * n + i] * root;
  }
  return out;
}

}  // namespace

template <typename T>
WhiteningInfo whitening_factor(const T* g, index_t n, double jitter, T* factor) {
  if (n <= 0) throw Error("whitening_factor: n = " + std::to_string(n) + " must be positive");
  if (!(jitter >= 0) || !std::isfinite(jitter))
    throw Error("whitening_factor: jitter = " + std::to_string(jitter) + " must be >= 0");
  detail::check_finite(g, n, n, n, "whitening_factor Gram");
  double trace = 0;
  for (index_t i = 0; i < n; ++i) trace += double(g[i * n + i]);
  const double mean_diag = trace / double(n);
  if (!(mean_diag > 0))
    throw Error("whitening_factor: Gram mean diagonal = " + std::to_string(mean_diag) +
                " (no signal: all inputs zero?)");

  if (try_cholesky(g, n, 0.0, factor)) return {WhiteningPath::Cholesky, 0.0, 0};
  for (int i = 0; jitter > 0 && i < kJitterTries; ++i) {
    const double shift = jitter * std::pow(10.0, i) * mean_diag;
    if (try_cholesky(g, n, shift, factor)) return {WhiteningPath::CholeskyJitter, shift, 0};
  }
  const double eps = std::numeric_limits<T>::epsilon() * double(n);
  return eigen_factor(g, n, std::max(jitter, eps), factor);
}

template WhiteningInfo whitening_factor<float>(const float*, index_t, double, float*);
template WhiteningInfo whitening_factor<double>(const double*, index_t, double, double*);

}  // namespace svdzip::core
