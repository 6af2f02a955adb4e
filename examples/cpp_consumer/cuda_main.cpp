// Uses svdzip's CUDA core from plain C++ and checks every op against the CPU core on the
// same data. Exits 77 (ctest: skipped) when there is no CUDA device, 1 if a result is off.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "svdzip/core.h"
#include "svdzip/cuda.h"

namespace sz = svdzip::core;
namespace szc = svdzip::cuda;

namespace {

struct Device {  // a device copy of a host vector, freed on scope exit
  double* p = nullptr;
  size_t n = 0;
  explicit Device(const std::vector<double>& h) : n(h.size()) {
    cudaMalloc(&p, n * sizeof(double));
    cudaMemcpy(p, h.data(), n * sizeof(double), cudaMemcpyHostToDevice);
  }
  explicit Device(size_t count) : n(count) { cudaMalloc(&p, n * sizeof(double)); cudaMemset(p, 0, n * sizeof(double)); }
  ~Device() { cudaFree(p); }
  std::vector<double> host() const {
    std::vector<double> h(n);
    cudaMemcpy(h.data(), p, n * sizeof(double), cudaMemcpyDeviceToHost);
    return h;
  }
};

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::fmax(d, std::fabs(a[i] - b[i]));
  return d;
}

// Rank-k product u diag(s) vh (m x n), for comparing SVDs without sign ambiguity.
std::vector<double> product(const std::vector<double>& u, const std::vector<double>& s,
                            const std::vector<double>& vh, sz::index_t m, sz::index_t n,
                            sz::index_t k) {
  std::vector<double> out(m * n, 0.0);
  for (sz::index_t i = 0; i < m; ++i)
    for (sz::index_t j = 0; j < n; ++j)
      for (sz::index_t r = 0; r < k; ++r) out[i * n + j] += u[i * k + r] * s[r] * vh[r * n + j];
  return out;
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  const sz::index_t T = 300, n = 40, m = 24, k = 10;
  std::mt19937 rng(0);
  std::normal_distribution<double> normal;
  std::vector<double> x(T * n), w(m * n);
  for (auto& v : x) v = normal(rng);
  for (auto& v : w) v = normal(rng);
  szc::Context ctx = szc::default_context();
  szc::StreamWorkspace ws(ctx.stream);
  Device dx(x), dw(w);

  std::vector<double> gram(n * n, 0.0), absum(n, 0.0);
  sz::gram_accumulate(gram.data(), x.data(), T, n, n, 1.0);
  sz::abs_sum_accumulate(absum.data(), x.data(), T, n, n, 1.0);
  Device dgram(n * n), dabs(n);
  szc::gram_accumulate(ctx, ws, dgram.p, dx.p, T, n, n, 1.0);
  szc::abs_sum_accumulate(ctx, ws, dabs.p, dx.p, T, n, n, 1.0);
  const double e_gram = max_abs_diff(dgram.host(), gram), e_abs = max_abs_diff(dabs.host(), absum);

  // 24 x 40 takes the one-by-one Jacobi path; a batch of 3 of 8 x 6 the batched one.
  std::vector<double> u(m * k), s(k), vh(k * n);
  sz::batched_svd(w.data(), 1, m, n, k, u.data(), s.data(), vh.data());
  Device du(m * k), ds(k), dvh(k * n);
  szc::batched_svd(ctx, ws, dw.p, 1, m, n, k, du.p, ds.p, dvh.p);
  const double e_svd = max_abs_diff(product(du.host(), ds.host(), dvh.host(), m, n, k),
                                    product(u, s, vh, m, n, k));
  std::vector<double> small(3 * 8 * 6);
  for (auto& v : small) v = normal(rng);
  Device dsmall(small), su(3 * 8 * 4), ss(3 * 4), svh(3 * 4 * 6);
  szc::batched_svd(ctx, ws, dsmall.p, 3, 8, 6, 4, su.p, ss.p, svh.p);
  std::vector<double> cu(3 * 8 * 4), cs(3 * 4), cvh(3 * 4 * 6);
  sz::batched_svd(small.data(), 3, 8, 6, 4, cu.data(), cs.data(), cvh.data());
  const double e_small = max_abs_diff(ss.host(), cs);

  std::vector<double> f(n * n);
  sz::WhiteningInfo info = sz::whitening_factor(gram.data(), n, 1e-8, f.data());
  Device df(n * n);
  sz::WhiteningInfo dinfo = szc::whitening_factor(ctx, ws, dgram.p, n, 1e-8, df.p);
  const double e_white = max_abs_diff(df.host(), f) / std::sqrt(gram[0]);

  std::vector<double> y(T * m), tmp(T * k);
  sz::lowrank_linear(x.data(), T, n, n, u.data(), m, k, vh.data(), nullptr, y.data(), tmp.data());
  Device dy(T * m);
  szc::lowrank_linear(ctx, ws, dx.p, T, n, n, du.p, m, k, dvh.p, nullptr, dy.p);
  // u/vh signs may differ per column between backends; compare through the products.
  const double e_lin = max_abs_diff(dy.host(), y) / (1 + max_abs_diff(y, std::vector<double>(y.size())));

  std::printf("%s\n%s\n", sz::build_info().c_str(), szc::build_info().c_str());
  std::printf("gram %.3g, |x| sum %.3g, svd %.3g, batched svd %.3g, whitening path %d/%d %.3g, "
              "low-rank linear %.3g\n", e_gram, e_abs, e_svd, e_small, int(info.path),
              int(dinfo.path), e_white, e_lin);
  const bool ok = e_gram < 1e-9 && e_abs < 1e-9 && e_svd < 1e-9 && e_small < 1e-9 &&
                  info.path == dinfo.path && e_white < 1e-9 && e_lin < 1e-9;
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
