// CUDA implementations of every svdzip op: the same checks as on CPU, then svdzip::cuda on
// torch's current stream, with torch's per-device cuBLAS/cuSOLVER handles and scratch memory
// from torch's caching allocator.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "checks.h"
#include "svdzip/cuda.h"

namespace svdzip::torch_ops {
using core::index_t;

namespace {

// Workspace buffers are byte tensors: freed back to the caching allocator when the op
// returns, and stream-ordered, so kernels still queued on the stream remain safe.
class TorchWorkspace final : public cuda::Workspace {
 public:
  explicit TorchWorkspace(at::Device device) : device_(device) {}
  void* allocate(std::size_t bytes) override {
    keep_.push_back(at::empty({static_cast<int64_t>(bytes ? bytes : 1)},
                              at::TensorOptions().dtype(at::kByte).device(device_)));
    return keep_.back().data_ptr();
  }
 private:
  at::Device device_;
  std::vector<at::Tensor> keep_;
};

// Torch's handles are cached per device and thread and already bound to the current stream.
cuda::Context current_context() {
  return cuda::Context{at::cuda::getCurrentCUDAStream().stream(),
                       at::cuda::getCurrentCUDABlasHandle(),
                       at::cuda::getCurrentCUDASolverDnHandle()};
}

void gram_accumulate_cuda(at::Tensor& acc, const at::Tensor& x, double alpha) {
  check_stat_args(acc, x, "gram_accumulate_", 2);
  c10::cuda::CUDAGuard guard(acc.device());
  const index_t n = x.size(-1);
  at::Tensor rows = as_rows(x, n, at::kFloat);
  if (rows.size(0) == 0) return;
  TorchWorkspace ws(acc.device());
  call_core("gram_accumulate_", [&] {
    const auto ctx = current_context();
    if (acc.scalar_type() == at::kFloat)
      cuda::gram_accumulate(ctx, ws, acc.data_ptr<float>(), rows.data_ptr<float>(), rows.size(0), n, n, alpha);
    else if (rows.scalar_type() == at::kFloat)
      cuda::gram_accumulate(ctx, ws, acc.data_ptr<double>(), rows.data_ptr<float>(), rows.size(0), n, n, alpha);
    else
      cuda::gram_accumulate(ctx, ws, acc.data_ptr<double>(), rows.data_ptr<double>(), rows.size(0), n, n, alpha);
  });
}

void cross_gram_accumulate_cuda(at::Tensor& acc, const at::Tensor& x, const at::Tensor& y,
                                double alpha) {
  check_cross_gram_args(acc, x, y);
  c10::cuda::CUDAGuard guard(acc.device());
  const index_t n = x.size(-1);
  at::Tensor xr = as_rows(x, n, at::kFloat).to(acc.scalar_type()).contiguous();
  at::Tensor yr = as_rows(y, n, at::kFloat).to(acc.scalar_type()).contiguous();
  if (xr.size(0) == 0) return;
  call_core("cross_gram_accumulate_", [&] {
    const auto ctx = current_context();
    if (acc.scalar_type() == at::kFloat)
      cuda::cross_gram_accumulate(ctx, acc.data_ptr<float>(), xr.data_ptr<float>(),
                                  yr.data_ptr<float>(), xr.size(0), n, n, n, alpha);
    else
      cuda::cross_gram_accumulate(ctx, acc.data_ptr<double>(), xr.data_ptr<double>(),
                                  yr.data_ptr<double>(), xr.size(0), n, n, n, alpha);
  });
}

template <bool kMax>
void abs_stat_cuda(at::Tensor& acc, const at::Tensor& x, double alpha, const char* op) {
  check_stat_args(acc, x, op, 1);
  c10::cuda::CUDAGuard guard(acc.device());
  const index_t n = x.size(-1);
  at::Tensor rows = as_rows(x, n, at::kFloat);
  const index_t r = rows.size(0);
  TorchWorkspace ws(acc.device());
  call_core(op, [&] {
    const auto ctx = current_context();
    auto run = [&](auto* a, const auto* xs) {
      if constexpr (kMax) cuda::abs_max_accumulate(ctx, ws, a, xs, r, n, n);
      else cuda::abs_sum_accumulate(ctx, ws, a, xs, r, n, n, alpha);
    };
    if (acc.scalar_type() == at::kFloat) run(acc.data_ptr<float>(), rows.data_ptr<float>());
    else if (rows.scalar_type() == at::kFloat) run(acc.data_ptr<double>(), rows.data_ptr<float>());
    else run(acc.data_ptr<double>(), rows.data_ptr<double>());
  });
}

void abs_mean_accumulate_cuda(at::Tensor& acc, const at::Tensor& x, double alpha) {
  abs_stat_cuda<false>(acc, x, alpha, "abs_mean_accumulate_");
}

void abs_max_accumulate_cuda(at::Tensor& acc, const at::Tensor& x) {
  abs_stat_cuda<true>(acc, x, 1.0, "abs_max_accumulate_");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batched_svd_cuda(const at::Tensor& A, int64_t k) {
  check_svd_args(A, k);
  c10::cuda::CUDAGuard guard(A.device());
  at::Tensor a = A.contiguous();
  const index_t m = a.size(-2), n = a.size(-1), batch = a.numel() / (m * n);
  auto [U, S, Vh] = svd_outputs(a, k);
  TorchWorkspace ws(a.device());
  call_core("batched_svd", [&] {
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "batched_svd", [&] {
      cuda::batched_svd(current_context(), ws, a.data_ptr<scalar_t>(), batch, m, n, k,
                        U.data_ptr<scalar_t>(), S.data_ptr<scalar_t>(), Vh.data_ptr<scalar_t>());
    });
  });
  return {U, S, Vh};
}

std::tuple<at::Tensor, at::Tensor> whitening_factor_cuda(const at::Tensor& G, double jitter) {
  check_whitening_args(G, jitter);
  c10::cuda::CUDAGuard guard(G.device());
  at::Tensor g = G.contiguous();
  at::Tensor F = at::empty_like(g);
  core::WhiteningInfo info;
  TorchWorkspace ws(g.device());
  call_core("whitening_factor", [&] {
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "whitening_factor", [&] {
      info = cuda::whitening_factor(current_context(), ws, g.data_ptr<scalar_t>(), g.size(0),
                                    jitter, F.data_ptr<scalar_t>());
    });
  });
  return {F, whitening_info(info, g)};
}

// cuSOLVER has no column-pivoted QR, and the pivoting itself is sequential (each pivot needs
// the norms left by all the previous ones), so a GPU gains little on one matrix: the CUDA
// kernel runs the CPU one (LAPACK geqp3) on a host copy and returns R and perm on A's
// device. One m x n copy each way per module, small next to the decomposition around it.
std::tuple<at::Tensor, at::Tensor> column_pivoted_qr_cuda(const at::Tensor& A) {
  check_pivoted_qr_args(A);
  static auto cpu_op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("svdzip::column_pivoted_qr", "")
                           .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>();
  auto [R, perm] = cpu_op.call(A.cpu());
  return {R.to(A.device()), perm.to(A.device())};
}

at::Tensor lowrank_linear_cuda(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                               const std::optional<at::Tensor>& bias) {
  check_lowrank_args(x, A, B, bias);
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t m = A.size(0), k = A.size(1), n = B.size(1);
  at::Tensor rows = x.reshape({-1, n}).contiguous();
  at::Tensor a = A.contiguous(), b = B.contiguous();
  std::optional<at::Tensor> c = bias.has_value() ? std::optional(bias->contiguous()) : std::nullopt;
  auto out_shape = x.sizes().vec();
  out_shape.back() = m;
  at::Tensor y = at::empty({rows.size(0), m}, x.options());
  TorchWorkspace ws(x.device());
  call_core("lowrank_linear", [&] {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lowrank_linear", [&] {
      cuda::lowrank_linear(current_context(), ws, rows.data_ptr<scalar_t>(), rows.size(0), n, n,
                           a.data_ptr<scalar_t>(), m, k, b.data_ptr<scalar_t>(),
                           c ? c->data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>());
    });
  });
  return y.view(out_shape);
}

}  // namespace

TORCH_LIBRARY_IMPL(svdzip, CUDA, m) {
  m.impl("gram_accumulate_", &gram_accumulate_cuda);
  m.impl("cross_gram_accumulate_", &cross_gram_accumulate_cuda);
  m.impl("abs_mean_accumulate_", &abs_mean_accumulate_cuda);
  m.impl("abs_max_accumulate_", &abs_max_accumulate_cuda);
  m.impl("batched_svd", &batched_svd_cuda);
  m.impl("column_pivoted_qr", &column_pivoted_qr_cuda);
  m.impl("whitening_factor", &whitening_factor_cuda);
  m.impl("lowrank_linear", &lowrank_linear_cuda);
}

}  // namespace svdzip::torch_ops
