// Streaming statistics on the GPU: Gram by cuBLAS syrk + mirror, |x| sums and maxima by a
// two-pass deterministic reduction.
#include <algorithm>
#include <cmath>

#include "common.cuh"

namespace svdzip::cuda {
namespace {

constexpr index_t kWidenChunkRows = 8192;  // fp32 rows widened to fp64 per syrk call

// syrk filled the column-major lower triangle = the row-major upper one; copy it down.
template <typename T>
__global__ void mirror_upper_to_lower(T* acc, index_t n) {
  const index_t total = n * n;
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < total;
       i += index_t(gridDim.x) * blockDim.x) {
    const index_t r = i / n, c = i % n;
    if (r > c) acc[i] = acc[c * n + r];
  }
}

template <typename T>
void mirror(const Context& ctx, T* acc, index_t n) {
  mirror_upper_to_lower<<<detail::blocks_for(n * n, 256), 256, 0, ctx.stream>>>(acc, n);
  detail::check_launch("mirror_upper_to_lower");
}

// Row-major x (rows x n, ld) is the column-major n x rows matrix X^T, so x^T x = X^T (X^T)^T
// is one syrk with op N: C (n x n) += alpha * A A^T.
template <typename T>
void syrk_rows(const Context& ctx, T* acc, const T* x, index_t rows, index_t n, index_t ldx,
               double alpha) {
  const T a = static_cast<T>(alpha), one = 1;
  detail::check(detail::syrk(ctx.blas, n, rows, &a, x, ldx, &one, acc, n), "cublas<t>syrk");
}

__global__ void widen_rows(const float* x, index_t rows, index_t n, index_t ldx, double* out) {
  const index_t total = rows * n;
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < total;
       i += index_t(gridDim.x) * blockDim.x)
    out[i] = static_cast<double>(x[(i / n) * ldx + i % n]);
}

template <bool kMax>
struct AbsOp;
template <>
struct AbsOp<false> {  // sum
  template <typename A>
  __device__ static A init() { return A(0); }
  template <typename A>
  __device__ static A combine(A acc, A v) { return acc + v; }
};
template <>
struct AbsOp<true> {  // max; NaN wins and sticks
  template <typename A>
  __device__ static A init() { return A(0); }
  template <typename A>
  __device__ static A combine(A acc, A v) { return (isnan(v) || v > acc) ? v : acc; }
};

constexpr int kCols = 32, kRowThreads = 8;
constexpr index_t kRowsPerSlab = 512;

// Pass 1: block (column tile, row slab) -> partial[slab][col]. Threads in x walk consecutive
// columns (coalesced rows); threads in y split the slab's rows and meet in shared memory.
template <bool kMax, typename Acc, typename T>
__global__ void abs_partials(const T* x, index_t rows, index_t n, index_t ldx, Acc* partial) {
  __shared__ Acc part[kRowThreads][kCols];
  const index_t col = blockIdx.x * index_t(kCols) + threadIdx.x;
  const index_t r0 = blockIdx.y * kRowsPerSlab, r1 = min(rows, r0 + kRowsPerSlab);
  Acc v = AbsOp<kMax>::template init<Acc>();
  if (col < n)
    for (index_t r = r0 + threadIdx.y; r < r1; r += kRowThreads)
      v = AbsOp<kMax>::combine(v, Acc(fabs(static_cast<double>(x[r * ldx + col]))));
  part[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  if (threadIdx.y == 0 && col < n) {
    for (int t = 1; t < kRowThreads; ++t) v = AbsOp<kMax>::combine(v, part[t][threadIdx.x]);
    partial[blockIdx.y * n + col] = v;
  }
}

// Pass 2: fold the slabs in order into acc (scaled by alpha for sums).
template <bool kMax, typename Acc>
__global__ void abs_fold(const Acc* partial, index_t slabs, index_t n, double alpha, Acc* acc) {
  const index_t col = blockIdx.x * index_t(blockDim.x) + threadIdx.x;
  if (col >= n) return;
  Acc v = AbsOp<kMax>::template init<Acc>();
  for (index_t s = 0; s < slabs; ++s) v = AbsOp<kMax>::combine(v, partial[s * n + col]);
  if (kMax) acc[col] = AbsOp<true>::combine(acc[col], v);
  else acc[col] += static_cast<Acc>(alpha) * v;
}

template <bool kMax, typename Acc, typename T>
void abs_stat(const Context& ctx, Workspace& ws, Acc* acc, const T* x, index_t rows, index_t n,
              index_t ldx, double alpha) {
  if (rows <= 0 || n <= 0) return;
  const index_t slabs = (rows + kRowsPerSlab - 1) / kRowsPerSlab;
  if (slabs > 65535) {  // grid.y limit: split the rows and fold each part in turn
    const index_t part = 65535 * kRowsPerSlab;
    for (index_t r = 0; r < rows; r += part)
      abs_stat<kMax>(ctx, ws, acc, x + r * ldx, std::min(part, rows - r), n, ldx, alpha);
    return;
  }
  Acc* partial = ws.get<Acc>(slabs * n);
  dim3 grid(static_cast<unsigned>((n + kCols - 1) / kCols), static_cast<unsigned>(slabs));
  abs_partials<kMax, Acc, T><<<grid, dim3(kCols, kRowThreads), 0, ctx.stream>>>(x, rows, n, ldx, partial);
  detail::check_launch("abs_partials");
  abs_fold<kMax, Acc><<<detail::blocks_for(n, 256), 256, 0, ctx.stream>>>(partial, slabs, n, alpha, acc);
  detail::check_launch("abs_fold");
}

}  // namespace

void gram_accumulate(const Context& ctx, Workspace&, float* acc, const float* x, index_t rows,
                     index_t n, index_t ldx, double alpha) {
  if (rows <= 0) return;
  syrk_rows(ctx, acc, x, rows, n, ldx, alpha);
  mirror(ctx, acc, n);
}

void gram_accumulate(const Context& ctx, Workspace&, double* acc, const double* x, index_t rows,
                     index_t n, index_t ldx, double alpha) {
  if (rows <= 0) return;
  syrk_rows(ctx, acc, x, rows, n, ldx, alpha);
  mirror(ctx, acc, n);
}

void gram_accumulate(const Context& ctx, Workspace& ws, double* acc, const float* x, index_t rows,
                     index_t n, index_t ldx, double alpha) {
  if (rows <= 0) return;
  const index_t chunk = std::min(rows, kWidenChunkRows);
  double* wide = ws.get<double>(chunk * n);
  for (index_t r = 0; r < rows; r += chunk) {
    const index_t cr = std::min(chunk, rows - r);
    widen_rows<<<detail::blocks_for(cr * n, 256), 256, 0, ctx.stream>>>(x + r * ldx, cr, n, ldx, wide);
    detail::check_launch("widen_rows");
    syrk_rows(ctx, acc, wide, cr, n, n, alpha);  // same stream: the next widen waits for it
  }
  mirror(ctx, acc, n);
}

namespace {
// Column-major: acc^T (n x n) += Yc Xc^T with Xc = x^T, Yc = y^T (see core's cross_gram_slab).
template <typename T>
void cross_gram(const Context& ctx, T* acc, const T* x, const T* y, index_t rows, index_t n,
                index_t ldx, index_t ldy, double alpha) {
  if (rows <= 0) return;
  const T a = static_cast<T>(alpha), one = 1;
  detail::check(detail::gemm(ctx.blas, CUBLAS_OP_N, CUBLAS_OP_T, n, n, rows, &a, y, ldy, x, ldx,
                             &one, acc, n), "cublas<t>gemm (cross_gram_accumulate)");
}
}  // namespace

void cross_gram_accumulate(const Context& ctx, float* acc, const float* x, const float* y,
                           index_t rows, index_t n, index_t ldx, index_t ldy, double alpha) {
  cross_gram(ctx, acc, x, y, rows, n, ldx, ldy, alpha);
}

void cross_gram_accumulate(const Context& ctx, double* acc, const double* x, const double* y,
                           index_t rows, index_t n, index_t ldx, index_t ldy, double alpha) {
  cross_gram(ctx, acc, x, y, rows, n, ldx, ldy, alpha);
}

template <typename Acc, typename T>
void abs_sum_accumulate(const Context& ctx, Workspace& ws, Acc* acc, const T* x, index_t rows,
                        index_t n, index_t ldx, double alpha) {
  abs_stat<false>(ctx, ws, acc, x, rows, n, ldx, alpha);
}

template <typename Acc, typename T>
void abs_max_accumulate(const Context& ctx, Workspace& ws, Acc* acc, const T* x, index_t rows,
                        index_t n, index_t ldx) {
  abs_stat<true>(ctx, ws, acc, x, rows, n, ldx, 1.0);
}

#define SVDZIP_ABS_INSTANTIATE(Acc, T)                                                         \
  template void abs_sum_accumulate<Acc, T>(const Context&, Workspace&, Acc*, const T*, index_t, \
                                           index_t, index_t, double);                          \
  template void abs_max_accumulate<Acc, T>(const Context&, Workspace&, Acc*, const T*, index_t, \
                                           index_t, index_t);
SVDZIP_ABS_INSTANTIATE(float, float)
SVDZIP_ABS_INSTANTIATE(double, float)
SVDZIP_ABS_INSTANTIATE(double, double)
#undef SVDZIP_ABS_INSTANTIATE

}  // namespace svdzip::cuda
