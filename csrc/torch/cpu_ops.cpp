// CPU implementations of the LAPACK-bound and statistics ops: checks, then svdzip::core.
// (GEMM-bound ops are in cpu_gemm_ops.cpp: see threads.h for why.)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
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
  check_svd_args(A, k);
  at::Tensor a = A.contiguous();
  const index_t m = a.size(-2), n = a.size(-1), batch = a.numel() / (m * n);
  auto [U, S, Vh] = svd_outputs(a, k);
  call_core("batched_svd", [&] {
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "batched_svd", [&] {
      const scalar_t* ap = a.data_ptr<scalar_t>();
      scalar_t *up = U.data_ptr<scalar_t>(), *sp = S.data_ptr<scalar_t>(), *vp = Vh.data_ptr<scalar_t>();
      auto run = [&](index_t b0, index_t b1) {
        core::batched_svd(ap + b0 * m * n, b1 - b0, m, n, k, up + b0 * m * k, sp + b0 * k,
                          vp + b0 * k * n, b0);
      };
      // gesdd's own threading scales poorly (on 2 cores, 576 x 576: 2 threads slower than 1),
      // so a batch that fills every thread runs one matrix per thread on a single-threaded
      // OpenBLAS: 1.4-1.6x faster for pairs of SmolLM2 shapes here. Smaller batches give
      // OpenBLAS all threads for each matrix in turn.
      if (batch >= 2 && batch >= at::get_num_threads()) {
        at::parallel_for(0, batch, 1, run);
      } else {
        BlasThreadsForScope threads;
        run(0, batch);
      }
    });
  });
  return {U, S, Vh};
}

std::tuple<at::Tensor, at::Tensor> column_pivoted_qr_cpu(const at::Tensor& A) {
  check_pivoted_qr_args(A);
  at::Tensor a = A.contiguous();
  const index_t m = a.size(0), n = a.size(1);
  at::Tensor R = at::empty({std::min(m, n), n}, a.options());
  at::Tensor perm = at::empty({n}, a.options().dtype(at::kLong));
  BlasThreadsForScope threads;
  call_core("column_pivoted_qr", [&] {
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "column_pivoted_qr", [&] {
      core::column_pivoted_qr(a.data_ptr<scalar_t>(), m, n, R.data_ptr<scalar_t>(),
                              perm.data_ptr<int64_t>());
    });
  });
  return {R, perm};
}

std::tuple<at::Tensor, at::Tensor> whitening_factor_cpu(const at::Tensor& G, double jitter) {
  check_whitening_args(G, jitter);
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
  return {F, whitening_info(info, g)};
}

}  // namespace

TORCH_LIBRARY_IMPL(svdzip, CPU, m) {
  set_blas_threads(1);  // see threads.h
  m.impl("abs_mean_accumulate_", &abs_mean_accumulate_cpu);
  m.impl("abs_max_accumulate_", &abs_max_accumulate_cpu);
  m.impl("batched_svd", &batched_svd_cpu);
  m.impl("column_pivoted_qr", &column_pivoted_qr_cpu);
  m.impl("whitening_factor", &whitening_factor_cpu);
}

}  // namespace svdzip::torch_ops
