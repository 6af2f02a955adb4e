// GEMM-bound ops on CPU, run on torch's thread pool (see threads.h for the measurements
// behind this): the Gram as per-thread slabs of single-threaded core BLAS calls, the
// low-rank linear on torch's own BLAS. svdzip::core keeps BLAS versions of both for C++ consumers.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "checks.h"
#include "svdzip/core.h"

namespace svdzip::torch_ops {
namespace {

// acc += alpha * x^T x as P row slabs of the lower triangle, one per torch thread, each a
// syrk + GEMM on OpenBLAS kept single-threaded (threads.h): half a full GEMM's flops (the
// earlier blocked-ATen version did 62.5%) without OpenBLAS's own thread pool. Slab p ends at
// n * sqrt(p / P) so every slab has the same share of the triangle. The slabs run on torch's
// own OpenMP threads (this file is built with -fopenmp, see torch_ops.cmake): threads of our
// own ran 1.2-2.6x slower while torch's workers still spun after the previous torch op.
void gram_accumulate_cpu(at::Tensor& acc, const at::Tensor& x, double alpha) {
  check_stat_args(acc, x, "gram_accumulate_", 2);
  const int64_t n = x.size(-1);
  at::Tensor rows = as_rows(x, n, at::kFloat).to(acc.scalar_type());
  const int64_t r = rows.size(0);
  if (r == 0) return;
  const int64_t slabs = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / 64));
  auto edge = [&](int64_t p) {
    return static_cast<int64_t>(std::llround(n * std::sqrt(double(p) / double(slabs))));
  };
  call_core("gram_accumulate_", [&] {
    AT_DISPATCH_FLOATING_TYPES(acc.scalar_type(), "gram_accumulate_", [&] {
      scalar_t* a = acc.data_ptr<scalar_t>();
      const scalar_t* xr = rows.data_ptr<scalar_t>();
      at::parallel_for(0, slabs, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p)
          core::gram_accumulate_rows(a, xr, r, n, n, alpha, edge(p), edge(p + 1));
      });
    });
  });
}

// acc += alpha * x^T y as equal-width row slabs of acc, one GEMM each on torch's threads
// (single-threaded OpenBLAS inside, as for the Gram).
void cross_gram_accumulate_cpu(at::Tensor& acc, const at::Tensor& x, const at::Tensor& y,
                               double alpha) {
  check_cross_gram_args(acc, x, y);
  const int64_t n = x.size(-1);
  at::Tensor xr = as_rows(x, n, at::kFloat).to(acc.scalar_type()).contiguous();
  at::Tensor yr = as_rows(y, n, at::kFloat).to(acc.scalar_type()).contiguous();
  const int64_t r = xr.size(0);
  if (r == 0) return;
  const int64_t slabs = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / 64));
  auto edge = [&](int64_t p) { return n * p / slabs; };
  call_core("cross_gram_accumulate_", [&] {
    AT_DISPATCH_FLOATING_TYPES(acc.scalar_type(), "cross_gram_accumulate_", [&] {
      scalar_t* a = acc.data_ptr<scalar_t>();
      const scalar_t* xs = xr.data_ptr<scalar_t>();
      const scalar_t* ys = yr.data_ptr<scalar_t>();
      at::parallel_for(0, slabs, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p)
          core::cross_gram_accumulate_rows(a, xs, ys, r, n, n, n, alpha, edge(p), edge(p + 1));
      });
    });
  });
}

at::Tensor lowrank_linear_cpu(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                              const std::optional<at::Tensor>& bias) {
  check_lowrank_args(x, A, B, bias);
  const int64_t m = A.size(0), n = B.size(1);
  at::Tensor rows = x.reshape({-1, n});
  auto out_shape = x.sizes().vec();
  out_shape.back() = m;
  // Two GEMMs and one rows x k buffer; W = A B is never formed.
  at::Tensor tmp = at::mm(rows, B.t());
  at::Tensor y = bias.has_value() ? at::addmm(*bias, tmp, A.t()) : at::mm(tmp, A.t());
  return y.view(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(svdzip, CPU, m) {
  m.impl("gram_accumulate_", &gram_accumulate_cpu);
  m.impl("cross_gram_accumulate_", &cross_gram_accumulate_cpu);
  m.impl("lowrank_linear", &lowrank_linear_cpu);
}

}  // namespace svdzip::torch_ops
