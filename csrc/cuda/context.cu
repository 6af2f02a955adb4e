// Handles, workspaces, status names and the small checks every CUDA op shares.
#include <cmath>
#include <map>
#include <string>

#include "common.cuh"

namespace svdzip::cuda {
namespace detail {

const char* solver_status_name(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "cusolverStatus_t (unlisted code)";
  }
}

int to_int(index_t v, const char* name) {
  if (v < 0 || v > 2147483647)
    throw core::Error(std::string(name) + " = " + std::to_string(v) +
                      " does not fit the int that cuSOLVER takes");
  return static_cast<int>(v);
}

template <typename T>
__global__ void count_nonfinite_kernel(const T* a, index_t rows, index_t n, index_t ld,
                                       unsigned long long* out) {
  unsigned long long local = 0;
  const index_t total = rows * n;
  for (index_t i = blockIdx.x * index_t(blockDim.x) + threadIdx.x; i < total;
       i += index_t(gridDim.x) * blockDim.x) {
    const T v = a[(i / n) * ld + i % n];
    if (!isfinite(v)) ++local;
  }
  if (local) atomicAdd(out, local);  // integer atomics: the count is exact and deterministic
}

template <typename T>
index_t count_nonfinite(const Context& ctx, Workspace& ws, const T* a, index_t rows, index_t n,
                        index_t ld) {
  if (rows * n == 0) return 0;
  auto* dev = ws.get<unsigned long long>(1);
  check(cudaMemsetAsync(dev, 0, sizeof(unsigned long long), ctx.stream), "cudaMemsetAsync");
  count_nonfinite_kernel<<<blocks_for(rows * n, 256), 256, 0, ctx.stream>>>(a, rows, n, ld, dev);
  check_launch("count_nonfinite_kernel");
  unsigned long long host = 0;
  to_host(ctx, &host, dev, 1, "count_nonfinite");
  return static_cast<index_t>(host);
}
template index_t count_nonfinite<float>(const Context&, Workspace&, const float*, index_t, index_t, index_t);
template index_t count_nonfinite<double>(const Context&, Workspace&, const double*, index_t, index_t, index_t);

}  // namespace detail

Context default_context(cudaStream_t stream) {
  // One pair of handles per (thread, device): cuBLAS/cuSOLVER handles are not thread-safe.
  struct Handles {
    cublasHandle_t blas = nullptr;
    cusolverDnHandle_t solver = nullptr;
  };
  thread_local std::map<int, Handles> cache;
  int device = 0;
  detail::check(cudaGetDevice(&device), "cudaGetDevice");
  Handles& h = cache[device];
  if (!h.blas) detail::check(cublasCreate(&h.blas), "cublasCreate");
  if (!h.solver) detail::check(cusolverDnCreate(&h.solver), "cusolverDnCreate");
  detail::check(cublasSetStream(h.blas, stream), "cublasSetStream");
  detail::check(cusolverDnSetStream(h.solver, stream), "cusolverDnSetStream");
  return Context{stream, h.blas, h.solver};
}

void* StreamWorkspace::allocate(std::size_t bytes) {
  void* p = nullptr;
  detail::check(cudaMallocAsync(&p, bytes ? bytes : 1, stream_), "cudaMallocAsync");
  blocks_.push_back(p);
  return p;
}

StreamWorkspace::~StreamWorkspace() {
  for (void* p : blocks_) cudaFreeAsync(p, stream_);  // stream-ordered: safe while work runs
}

std::string build_info() {
  int rt = 0, drv = 0, blas[2] = {0, 0}, solver[2] = {0, 0};
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  cublasGetProperty(MAJOR_VERSION, &blas[0]);
  cublasGetProperty(MINOR_VERSION, &blas[1]);
  cusolverGetProperty(MAJOR_VERSION, &solver[0]);
  cusolverGetProperty(MINOR_VERSION, &solver[1]);
  return "CUDA runtime " + std::to_string(rt) + " (built " + std::to_string(CUDART_VERSION) +
         "), driver " + std::to_string(drv) + ", cuBLAS " + std::to_string(blas[0]) + "." +
         std::to_string(blas[1]) + ", cuSOLVER " + std::to_string(solver[0]) + "." +
         std::to_string(solver[1]);
}

}  // namespace svdzip::cuda
