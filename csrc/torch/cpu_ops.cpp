// CPU implementations of the LAPACK-bound and statistics ops: checks, then svdzip::core.
// (GEMM-bound ops are in cpu_gemm_ops.cpp: see threads.h for why.)
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "checks.h"
#include "threads.h"
#include "svdzip/core.h"

namespace svdzip::torch_ops {
using core::index_t;

namespace {

template <bool kMax>
void abs_stat_cpu(at::Tensor& acc, const at::Tensor& x, double alpha, const char* op) {
  check_stat_args(acc, x, op, 1);
  const index_t n = x.size(-1);
  at::Tensor rows = as_rows(x, n, at::kFloat);
  const index_t r = rows.size(0);
  call_core(op, [&] {
    AT_DISPATCH_FLOATING_TYPES(acc.scalar_type(), "abs_stat_acc", [&] {
      using Acc = scalar_t;
      if (rows.scalar_type() == at::kFloat) {
        if constexpr (kMax) core::abs_max_accumulate(acc.data_ptr<Acc>(), rows.data_ptr<float>(), r, n, n);
        else core::abs_sum_accumulate(acc.data_ptr<Acc>(), rows.data_ptr<float>(), r, n, n, alpha);
      } else {  // double rows only reach a double acc (checked above)
        if constexpr (kMax) core::abs_max_accumulate(acc.data_ptr<double>(), rows.data_ptr<double>(), r, n, n);
        else core::abs_sum_accumulate(acc.data_ptr<double>(), rows.data_ptr<double>(), r, n, n, alpha);
      }
    });
  });
}

void abs_mean_accumulate_cpu(at::Tensor& acc, const at::Tensor& x, double alpha) {
  abs_stat_cpu<false>(acc, x, alpha, "abs_mean_accumulate_");
}

void abs_max_accumulate_cpu(at::Tensor& acc, const at::Tensor& x) {
  abs_stat_cpu<true>(acc, x, 1.0, "abs_max_accumulate_");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batched_svd_cpu(const at::Tensor& A, int64_t k) {
  check_float_dtype(A, "batched_svd", "A");
  TORCH_CHECK_VALUE(A.dim() >= 2, "batched_svd: A must have at least 2 dims, got ", A.sizes());
  const index_t m = A.size(-2), n = A.size(-1);
  TORCH_CHECK_VALUE(m > 0 && n > 0, "batched_svd: empty matrices ", A.sizes());
  TORCH_CHECK_VALUE(k >= 1 && k <= std::min(m, n), "batched_svd: k = ", k,
                    " must be in [1, min(m, n) = ", std::min(m, n), "] for A of shape ", A.sizes());
  at::Tensor a = A.contiguous();
  auto batch_shape = A.sizes().slice(0, A.dim() - 2).vec();
  const index_t batch = c10::multiply_integers(batch_shape);
  auto with = [&](std::initializer_list<int64_t> tail) {
    auto s = batch_shape;
    s.insert(s.end(), tail.begin(), tail.end());
    return at::empty(s, a.options());
  };
  at::Tensor U = with({m, k}), S = with({k}), Vh = with({k, n});
  BlasThreadsForScope threads;
  call_core("batched_svd", [&] {
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "batched_svd", [&] {
      core::batched_svd(a.data_ptr<scalar_t>(), batch, m, n, k, U.data_ptr<scalar_t>(),
                        S.data_ptr<scalar_t>(), Vh.data_ptr<scalar_t>());
    });
  });
  return {U, S, Vh};
}

std::tuple<at::Tensor, at::Tensor> whitening_factor_cpu(const at::Tensor& G, double jitter) {
  check_float_dtype(G, "whitening_factor", "G");
  TORCH_CHECK_VALUE(G.dim() == 2 && G.size(0) == G.size(1) && G.size(0) > 0,
                    "whitening_factor: G must be a non-empty square matrix, got ", G.sizes());
  TORCH_CHECK_VALUE(jitter >= 0, "whitening_factor: jitter = ", jitter, " must be >= 0");
  at::Tensor g = G.contiguous();
  at::Tensor F = at::empty_like(g);
  core::WhiteningInfo info;
  BlasThreadsForScope threads;
  call_core("whitening_factor", [&] {
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "whitening_factor", [&] {
      info = core::whitening_factor(g.data_ptr<scalar_t>(), g.size(0), jitter,
                                    F.data_ptr<scalar_t>());
    });
  });
  at::Tensor out = at::empty({3}, g.options().dtype(at::kDouble));
  auto* p = out.data_ptr<double>();
  p[0] = static_cast<double>(static_cast<int>(info.path));
  p[1] = info.shift;
  p[2] = static_cast<double>(info.clamped);
  return {F, out};
}

}  // namespace

TORCH_LIBRARY_IMPL(svdzip, CPU, m) {
  set_blas_threads(1);  // see threads.h
  m.impl("abs_mean_accumulate_", &abs_mean_accumulate_cpu);
  m.impl("abs_max_accumulate_", &abs_max_accumulate_cpu);
  m.impl("batched_svd", &batched_svd_cpu);
  m.impl("whitening_factor", &whitening_factor_cpu);
}

}  // namespace svdzip::torch_ops
