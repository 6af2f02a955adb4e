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

}  // namespace svdzip::torch_ops
