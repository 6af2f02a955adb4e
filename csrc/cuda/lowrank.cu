// Low-rank linear on the GPU: y = (x B^T) A^T + bias as two cuBLAS GEMMs (GEMV for one row)
// with the rows x k intermediate in the workspace. Column-major view of row-major buffers:
// tmp^T (k x rows) = B (k x n) x^T, y^T (m x rows) = A (m x k) tmp^T.
#include "common.cuh"

namespace svdzip::cuda {
namespace {

template <typename T>
__global__ void broadcast_bias(const T* bias, index_t rows, index_t m, T* y) {
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < rows * m;
       i += index_t(gridDim.x) * blockDim.x)
    y[i] = bias[i % m];
}

}  // namespace

template <typename T>
void lowrank_linear(const Context& ctx, Workspace& ws, const T* x, index_t rows, index_t n,
                    index_t ldx, const T* a, index_t m, index_t k, const T* b,
                    const typename core::nondeduced<T>::type* bias, T* y) {
  if (rows <= 0) return;
  if (m <= 0 || n <= 0 || k <= 0 || ldx < n)
    throw core::Error("lowrank_linear: bad sizes m=" + std::to_string(m) + " n=" +
                      std::to_string(n) + " k=" + std::to_string(k) + " ldx=" + std::to_string(ldx));
  const T one = 1, zero = 0;
  const T beta = bias ? one : zero;
  if (bias) {
    broadcast_bias<<<detail::blocks_for(rows * m, 256), 256, 0, ctx.stream>>>(bias, rows, m, y);
    detail::check_launch("broadcast_bias");
  }
  T* tmp = ws.get<T>(rows * k);
  if (rows == 1) {  // decode: two matrix-vector products, each reads its factor once
    detail::check(detail::gemv(ctx.blas, CUBLAS_OP_T, n, k, &one, b, n, x, &zero, tmp),
                  "cublas<t>gemv (B)");
    detail::check(detail::gemv(ctx.blas, CUBLAS_OP_T, k, m, &one, a, k, tmp, &beta, y),
                  "cublas<t>gemv (A)");
    return;
  }
  detail::check(detail::gemm(ctx.blas, CUBLAS_OP_T, CUBLAS_OP_N, k, rows, n, &one, b, n, x, ldx,
                             &zero, tmp, k), "cublas<t>gemm (x B^T)");
  detail::check(detail::gemm(ctx.blas, CUBLAS_OP_T, CUBLAS_OP_N, m, rows, k, &one, a, k, tmp, k,
                             &beta, y, m), "cublas<t>gemm (tmp A^T)");
}

template void lowrank_linear<float>(const Context&, Workspace&, const float*, index_t, index_t,
                                    index_t, const float*, index_t, index_t, const float*,
                                    const float*, float*);
template void lowrank_linear<double>(const Context&, Workspace&, const double*, index_t, index_t,
                                     index_t, const double*, index_t, index_t, const double*,
                                     const double*, double*);

}  // namespace svdzip::cuda
