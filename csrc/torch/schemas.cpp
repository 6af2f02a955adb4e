// Every svdzip op schema, in one place. Mutating ops end in `_` and declare Tensor(a!).
#include <torch/library.h>

TORCH_LIBRARY(svdzip, m) {
  // acc (n x n, fp32/fp64) += alpha * x^T x over all rows of x (..., n): streaming Gram.
  m.def("gram_accumulate_(Tensor(a!) acc, Tensor x, float alpha=1.0) -> ()");
  // acc (n x n, fp32/fp64) += alpha * x^T y for x, y (..., n) with the same rows: the
  // cross-Gram of two streams at the same tokens (dense vs compressed inputs of a layer).
  m.def("cross_gram_accumulate_(Tensor(a!) acc, Tensor x, Tensor y, float alpha=1.0) -> ()");
  // acc (n) += alpha * sum over rows of |x|; alpha = 1/tokens gives ASVD's mean |x|.
  m.def("abs_mean_accumulate_(Tensor(a!) acc, Tensor x, float alpha=1.0) -> ()");
  // acc (n) = max(acc, max over rows of |x|): ASVD's alternative max |x| statistic.
  m.def("abs_max_accumulate_(Tensor(a!) acc, Tensor x) -> ()");
  // Rank-k truncated SVD of A (..., m, n): U (..., m, k), S (..., k) descending, Vh (..., k, n).
  m.def("batched_svd(Tensor A, int k) -> (Tensor U, Tensor S, Tensor Vh)");
  // Column-pivoted QR of A (m, n): A[:, perm] = Q R; R (min(m, n), n) upper trapezoidal in
  // pivot order, perm (n) int64. Q is not formed. The interpolative decomposition's columns.
  m.def("column_pivoted_qr(Tensor A) -> (Tensor R, Tensor perm)");
  // factor F with F F^T ~= G (n x n); info (fp64, 3) = [path 0 chol / 1 jitter / 2 eigen,
  // shift added or eigenvalue floor, number of eigenvalues clamped].
  m.def("whitening_factor(Tensor G, float jitter=1e-6) -> (Tensor factor, Tensor info)");
  // y = (x B^T) A^T + bias for x (..., n), A (m, k), B (k, n), bias (m): W = A B never formed.
  m.def("lowrank_linear(Tensor x, Tensor A, Tensor B, Tensor? bias=None) -> Tensor");
}
