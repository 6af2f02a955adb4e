// GEMM-bound ops on CPU, run on torch's own BLAS and thread pool (see threads.h for the
// measurements behind this). svdzip::core keeps BLAS versions of both for C++ consumers.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"

namespace svdzip::torch_ops {
namespace {

// acc += alpha * x^T x touching only block pairs (i >= j) of the lower triangle, then
// mirroring: with b column blocks this does (b+1)/2b of a full GEMM's flops (62.5% at b=4)
// while each piece is still a large, well-threaded GEMM.
void gram_accumulate_cpu(at::Tensor& acc, const at::Tensor& x, double alpha) {
  check_stat_args(acc, x, "gram_accumulate_", 2);
  const int64_t n = x.size(-1);
  at::Tensor rows = as_rows(x, n, at::kFloat).to(acc.scalar_type());
  if (rows.size(0) == 0) return;
  const int64_t bs = n <= 256 ? n : std::max<int64_t>(128, (n + 3) / 4);
  // Each lower block is final once its GEMM is done, so it is mirrored right there (diagonal
  // blocks too: a GEMM is not bitwise symmetric). Block by block on purpose: a whole-matrix
  // tril() allocated an n x n temporary on every call (19 MB for n = 1536, once per calibration
  // window), which fragmented glibc's heap.
  for (int64_t i = 0; i < n; i += bs) {
    const int64_t ni = std::min(bs, n - i);
    at::Tensor xi = rows.narrow(1, i, ni);
    for (int64_t j = 0; j <= i; j += bs) {
      const int64_t nj = std::min(bs, n - j);
      at::Tensor block = acc.narrow(0, i, ni).narrow(1, j, nj);
      block.addmm_(xi.t(), rows.narrow(1, j, nj), 1.0, alpha);
      if (j < i) {
        acc.narrow(0, j, nj).narrow(1, i, ni).copy_(block.t());
      } else {
        block.copy_(block.tril() + block.tril(-1).t());
      }
    }
  }
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
  m.impl("lowrank_linear", &lowrank_linear_cpu);
}

}  // namespace svdzip::torch_ops
