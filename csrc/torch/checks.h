// Argument checks shared by the CPU (and CUDA) registrations. Messages name the value.
#pragma once

#include <ATen/ATen.h>

#include <utility>

#include "svdzip/core.h"

namespace svdzip::torch_ops {

inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ",
                   name, " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": tensors on different devices ", a.device(),
                    " and ", b.device());
}

// Runs a core call and turns its exceptions into torch errors carrying the op name.
template <typename F>
void call_core(const char* op, F&& f) {
  try {
    std::forward<F>(f)();
  } catch (const svdzip::core::Error& e) {
    TORCH_CHECK(false, "svdzip::", op, ": ", e.what());
  }
}

// Activations arrive in any float dtype and shape (..., n); stats use fp32 or wider rows.
inline at::Tensor as_rows(const at::Tensor& x, int64_t n, at::ScalarType min_type) {
  at::Tensor r = x.reshape({-1, n});
  if (r.scalar_type() != at::kDouble && r.scalar_type() != min_type) r = r.to(min_type);
  return r.contiguous();
}

// Shared checks of the statistics ops: acc is (n) or (n, n) matching x's last dim.
inline void check_stat_args(const at::Tensor& acc, const at::Tensor& x, const char* op,
                            int acc_dim) {
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

}  // namespace svdzip::torch_ops
