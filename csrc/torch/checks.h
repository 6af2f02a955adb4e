// Argument checks shared by the CPU (and CUDA) registrations. Messages name the value.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <tuple>
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

// The cross-Gram's x and y: each a valid statistics input for acc, with the same rows.
inline void check_cross_gram_args(const at::Tensor& acc, const at::Tensor& x, const at::Tensor& y) {
  check_stat_args(acc, x, "cross_gram_accumulate_", 2);
  check_stat_args(acc, y, "cross_gram_accumulate_", 2);
  TORCH_CHECK_VALUE(x.numel() == y.numel(), "cross_gram_accumulate_: x ", x.sizes(), " and y ",
                    y.sizes(), " must hold the same rows (the same tokens)");
}

inline void check_svd_args(const at::Tensor& A, int64_t k) {
  check_float_dtype(A, "batched_svd", "A");
  TORCH_CHECK_VALUE(A.dim() >= 2, "batched_svd: A must have at least 2 dims, got ", A.sizes());
  const int64_t m = A.size(-2), n = A.size(-1);
  TORCH_CHECK_VALUE(m > 0 && n > 0, "batched_svd: empty matrices ", A.sizes());
  TORCH_CHECK_VALUE(k >= 1 && k <= std::min(m, n), "batched_svd: k = ", k,
                    " must be in [1, min(m, n) = ", std::min(m, n), "] for A of shape ", A.sizes());
}

// U (..., m, k), S (..., k), Vh (..., k, n) for A (..., m, n), uninitialised.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> svd_outputs(const at::Tensor& a, int64_t k) {
  auto batch_shape = a.sizes().slice(0, a.dim() - 2).vec();
  auto with = [&](std::initializer_list<int64_t> tail) {
    auto s = batch_shape;
    s.insert(s.end(), tail.begin(), tail.end());
    return at::empty(s, a.options());
  };
  return {with({a.size(-2), k}), with({k}), with({k, a.size(-1)})};
}

inline void check_pivoted_qr_args(const at::Tensor& A) {
  check_float_dtype(A, "column_pivoted_qr", "A");
  TORCH_CHECK_VALUE(A.dim() == 2 && A.size(0) > 0 && A.size(1) > 0,
                    "column_pivoted_qr: A must be a non-empty matrix, got ", A.sizes());
}

inline void check_whitening_args(const at::Tensor& G, double jitter) {
  check_float_dtype(G, "whitening_factor", "G");
  TORCH_CHECK_VALUE(G.dim() == 2 && G.size(0) == G.size(1) && G.size(0) > 0,
                    "whitening_factor: G must be a non-empty square matrix, got ", G.sizes());
  TORCH_CHECK_VALUE(jitter >= 0, "whitening_factor: jitter = ", jitter, " must be >= 0");
}

// The info tensor of whitening_factor, on G's device: [path, shift, clamped].
inline at::Tensor whitening_info(const core::WhiteningInfo& info, const at::Tensor& G) {
  at::Tensor out = at::empty({3}, at::TensorOptions().dtype(at::kDouble));
  auto* p = out.data_ptr<double>();
  p[0] = static_cast<double>(static_cast<int>(info.path));
  p[1] = info.shift;
  p[2] = static_cast<double>(info.clamped);
  return out.to(G.device());
}

inline void check_lowrank_args(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                               const std::optional<at::Tensor>& bias) {
  check_float_dtype(x, "lowrank_linear", "x");
  TORCH_CHECK_VALUE(A.dim() == 2 && B.dim() == 2 && x.dim() >= 1,
                    "lowrank_linear: A and B must be 2-D, got A ", A.sizes(), ", B ", B.sizes());
  const int64_t m = A.size(0), k = A.size(1), n = B.size(1);
  TORCH_CHECK_VALUE(B.size(0) == k, "lowrank_linear: A is ", A.sizes(), " but B is ", B.sizes(),
                    " (need A (m, k) and B (k, n))");
  TORCH_CHECK_VALUE(x.size(-1) == n, "lowrank_linear: x's last dim ", x.size(-1),
                    " != B's in-features ", n);
  TORCH_CHECK_TYPE(A.scalar_type() == x.scalar_type() && B.scalar_type() == x.scalar_type(),
                   "lowrank_linear: dtypes differ: x ", x.scalar_type(), ", A ", A.scalar_type(),
                   ", B ", B.scalar_type());
  check_same_device(A, x, "lowrank_linear");
  check_same_device(B, x, "lowrank_linear");
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == m && bias->scalar_type() == x.scalar_type(),
                      "lowrank_linear: bias must be (", m, ") of ", x.scalar_type(), ", got ",
                      bias->sizes(), " ", bias->scalar_type());
    check_same_device(*bias, x, "lowrank_linear");
  }
}

}  // namespace svdzip::torch_ops
