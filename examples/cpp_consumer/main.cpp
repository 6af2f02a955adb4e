// Uses svdzip's core from plain C++: Gram of some activations, its whitening factor, an SVD
// of a weight and the low-rank linear built from it. Exits non-zero if any result is off.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "svdzip/core.h"

namespace sz = svdzip::core;

static double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::fmax(d, std::fabs(a[i] - b[i]));
  return d;
}

int main() {
  const sz::index_t T = 64, n = 8, m = 12;
  std::mt19937 rng(0);
  std::normal_distribution<double> normal;
  std::vector<double> x(T * n), w(m * n);
  for (auto& v : x) v = normal(rng);
  for (auto& v : w) v = normal(rng);

  // Gram X^T X, streamed in chunks of 10 rows, against the textbook triple loop.
  std::vector<double> gram(n * n, 0.0), naive(n * n, 0.0);
  sz::gram_accumulate(gram.data(), x.data(), T, n, n, 1.0, 10);
  for (sz::index_t t = 0; t < T; ++t)
    for (sz::index_t i = 0; i < n; ++i)
      for (sz::index_t j = 0; j < n; ++j) naive[i * n + j] += x[t * n + i] * x[t * n + j];
  const double e_gram = max_abs_diff(gram, naive);

  // Whitening factor F with F F^T = G.
  std::vector<double> f(n * n), ffT(n * n, 0.0);
  sz::WhiteningInfo info = sz::whitening_factor(gram.data(), n, 1e-8, f.data());
  for (sz::index_t i = 0; i < n; ++i)
    for (sz::index_t j = 0; j < n; ++j)
      for (sz::index_t k = 0; k < n; ++k) ffT[i * n + j] += f[i * n + k] * f[j * n + k];
  const double e_white = max_abs_diff(ffT, gram);

  // Full-rank SVD of W, folded into A = U S and B = Vh: the low-rank linear must equal x W^T.
  const sz::index_t k = n;
  std::vector<double> u(m * k), s(k), vh(k * n), y(T * m), tmp(T * k), ref(T * m, 0.0);
  sz::batched_svd(w.data(), 1, m, n, k, u.data(), s.data(), vh.data());
  for (sz::index_t i = 0; i < m; ++i)
    for (sz::index_t j = 0; j < k; ++j) u[i * k + j] *= s[j];
  sz::lowrank_linear(x.data(), T, n, n, u.data(), m, k, vh.data(), nullptr, y.data(), tmp.data());
  for (sz::index_t t = 0; t < T; ++t)
    for (sz::index_t i = 0; i < m; ++i)
      for (sz::index_t j = 0; j < n; ++j) ref[t * m + i] += x[t * n + j] * w[i * n + j];
  const double e_lin = max_abs_diff(y, ref);

  std::printf("%s\n", sz::build_info().c_str());
  std::printf("gram max error %.3g, whitening path %d error %.3g, low-rank linear error %.3g\n",
              e_gram, static_cast<int>(info.path), e_white, e_lin);
  const bool ok = e_gram < 1e-9 && e_white < 1e-8 && e_lin < 1e-9;
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
