// CPU implementations of the svdzip ops: checks, then a call into svdzip::core.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "checks.h"
#include "svdzip/core.h"

namespace svdzip::torch_ops {
namespace {

using core::index_t;

// Activations arrive in any float dtype; stats are computed on fp32 or wider rows.
at::Tensor as_rows(const at::Tensor& x, index_t n, at::ScalarType min_type) {
  at::Tensor r = x.reshape({-1, n});
  if (r.scalar_type() != at::kDouble && r.scalar_type() != min_type) r = r.to(min_type);
  return r.contiguous();
}

void check_stat_args(const at::Tensor& acc, const at::Tensor& x, const char* op, int acc_dim) {
  TORCH_CHECK_TYPE(x.is_floating_point(), op, ": x must be floating point, got ", x.scalar_type());
  check_float_dtype(acc, op, "acc");
  check_same_device(acc, x, op);
  TORCH_CHECK_VALUE(acc.is_contiguous(), op, ": acc must be contiguous");
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least 1 dim, got ", x.dim());
  const auto n = x.size(-1);
  TORCH_CHECK_VALUE(acc.dim() == acc_dim && acc.size(0) == n && (acc_dim == 1 || acc.size(1) == n),
                    op, ": acc shape ", acc.sizes(), " does not match x's last dim ", n);
  TORCH_CHECK_TYPE(!(acc.scalar_type() == at::kFloat && x.scalar_type() == at::kDouble), op,
                   ": float64 x into a float32 acc would lose precision");
}

void gram_accumulate_cpu(at::Tensor& acc, const at::Tensor& x, double alpha) {
  check_stat_args(acc, x, "gram_accumulate_", 2);
  const index_t n = x.size(-1);
  at::Tensor rows = as_rows(x, n, at::kFloat);
  const index_t r = rows.size(0);
  call_core("gram_accumulate_", [&] {
    if (acc.scalar_type() == at::kFloat)
      core::gram_accumulate(acc.data_ptr<float>(), rows.data_ptr<float>(), r, n, n, alpha);
    else if (rows.scalar_type() == at::kFloat)
      core::gram_accumulate(acc.data_ptr<double>(), rows.data_ptr<float>(), r, n, n, alpha);
    else
      core::gram_accumulate(acc.data_ptr<double>(), rows.data_ptr<double>(), r, n, n, alpha);
  });
}

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

at::Tensor lowrank_linear_cpu(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                              const std::optional<at::Tensor>& bias) {
  check_float_dtype(x, "lowrank_linear", "x");
  TORCH_CHECK_VALUE(A.dim() == 2 && B.dim() == 2 && x.dim() >= 1,
                    "lowrank_linear: A and B must be 2-D, got A ", A.sizes(), ", B ", B.sizes());
  const index_t m = A.size(0), k = A.size(1), n = B.size(1);
  TORCH_CHECK_VALUE(B.size(0) == k, "lowrank_linear: A is ", A.sizes(), " but B is ", B.sizes(),
                    " (need A (m, k) and B (k, n))");
  TORCH_CHECK_VALUE(x.size(-1) == n, "lowrank_linear: x's last dim ", x.size(-1),
                    " != B's in-features ", n);
  TORCH_CHECK_TYPE(A.scalar_type() == x.scalar_type() && B.scalar_type() == x.scalar_type(),
                   "lowrank_linear: dtypes differ: x ", x.scalar_type(), ", A ", A.scalar_type(),
                   ", B ", B.scalar_type());
  at::Tensor b_ = bias.has_value() ? bias->contiguous() : at::Tensor();
  if (b_.defined())
    TORCH_CHECK_VALUE(b_.dim() == 1 && b_.size(0) == m && b_.scalar_type() == x.scalar_type(),
                      "lowrank_linear: bias must be (", m, ") of ", x.scalar_type(), ", got ",
                      b_.sizes(), " ", b_.scalar_type());
  at::Tensor rows = x.reshape({-1, n}).contiguous(), a = A.contiguous(), b = B.contiguous();
  const index_t r = rows.size(0);
  auto out_shape = x.sizes().vec();
  out_shape.back() = m;
  at::Tensor y = at::empty({r, m}, x.options());
  at::Tensor tmp = at::empty({r, k}, x.options());
  call_core("lowrank_linear", [&] {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lowrank_linear", [&] {
      core::lowrank_linear(rows.data_ptr<scalar_t>(), r, n, n, a.data_ptr<scalar_t>(), m, k,
                           b.data_ptr<scalar_t>(), b_.defined() ? b_.data_ptr<scalar_t>() : nullptr,
                           y.data_ptr<scalar_t>(), tmp.data_ptr<scalar_t>());
    });
  });
  return y.view(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(svdzip, CPU, m) {
  m.impl("gram_accumulate_", &gram_accumulate_cpu);
  m.impl("abs_mean_accumulate_", &abs_mean_accumulate_cpu);
  m.impl("abs_max_accumulate_", &abs_max_accumulate_cpu);
  m.impl("batched_svd", &batched_svd_cpu);
  m.impl("whitening_factor", &whitening_factor_cpu);
  m.impl("lowrank_linear", &lowrank_linear_cpu);
}

}  // namespace svdzip::torch_ops
