// y = x @ w.T (+ bias) for the rows of a decode step (up to kSmallBatchRows rows of x) in float32 on
// the CPU. Decode reads every weight once per step, so this is a stream over w: each thread takes a
// range of output rows; up to 4 rows of x it dots them one weight row at a time, above that it keeps
// a few weight rows in L1 and dots them with every block of x rows (row_dots.h). BLAS sgemv read
// at about half the machine's bandwidth on the AMD dev box (13 of 28 GB/s), which made batch-1
// decode twice the floor; for 5-64 rows MKL's sgemm packs the weights on every call, which a
// product reading each weight for at most 64 rows cannot pay back.
#include "small_batch_linear.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>

#include "cpu_kernels.h"
#include "row_dots.h"

namespace fastpage::kernels::cpu {
namespace {

// Up to this many rows of x, one weight row at a time is dotted with each of them: the whole of w
// is then a single sequential stream, which the hardware prefetcher follows best (batch-1 decode
// ran 5% slower with the row blocks below, whose passes read 8 weight rows side by side).
constexpr int64_t kStreamRows = 4;
// Weight rows that stay in L1 while every block of x rows passes over them.
constexpr int64_t kWeightRowsPerPass = 8;

void stream_rows(const float* x, int64_t num_x, int64_t k, const float* w, const float* bias, float* y,
                 int64_t n, int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const float* w_row = w + r * k;
    for (int64_t i = 0; i < num_x; ++i) {
      const float sum = dot(x + i * k, w_row, k);
      y[i * n + r] = bias ? sum + bias[r] : sum;
    }
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The same loop compiled for AVX2 + FMA and picked at run time: the portable build is SSE2 only.
__attribute__((target("avx2,fma"), flatten)) void stream_rows_avx2(
    const float* x, int64_t num_x, int64_t k, const float* w, const float* bias, float* y, int64_t n,
    int64_t row_begin, int64_t row_end) {
  stream_rows(x, num_x, k, w, bias, y, n, row_begin, row_end);
}
#endif

void blocked_rows(const float* x, int64_t num_x, int64_t k, const float* w, const float* bias, float* y,
                  int64_t n, int64_t row_begin, int64_t row_end) {
  const float* w_rows[kWeightRowsPerPass];
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kWeightRowsPerPass) {
    const int64_t num_w = std::min(kWeightRowsPerPass, row_end - r0);
    for (int64_t j = 0; j < num_w; ++j) w_rows[j] = w + (r0 + j) * k;
    for (int64_t i = 0; i < num_x; i += kDotRowBlock) {
      dot_rows(x + i * k, std::min(kDotRowBlock, num_x - i), w_rows, num_w, k, y + i * n + r0, n);
    }
    if (bias) {
      for (int64_t i = 0; i < num_x; ++i) {
        for (int64_t j = 0; j < num_w; ++j) y[i * n + r0 + j] += bias[r0 + j];
      }
    }
  }
}

using RowsFn = decltype(&stream_rows);
RowsFn rows_fn(int64_t num_x) {
  if (num_x > kStreamRows) return &blocked_rows;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return &stream_rows_avx2;
#endif
  return &stream_rows;
}

}  // namespace

bool use_small_batch_linear(const at::Tensor& x, const at::Tensor& weight) {
  return x.device().is_cpu() && x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat &&
         x.dim() == 2 && x.size(0) <= kSmallBatchRows && weight.is_contiguous() && x.is_contiguous();
}

void small_batch_linear_out(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias) {
  const int64_t num_x = x.size(0), k = x.size(1), n = weight.size(0);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == k, "fastpage small_batch_linear: weight ",
              weight.sizes(), " does not match x ", x.sizes());
  TORCH_CHECK(!bias.defined() || (bias.numel() == n && bias.is_contiguous() &&
                                  bias.scalar_type() == at::kFloat),
              "fastpage small_batch_linear: bias must be a contiguous float32 [", n, "]");
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == at::kFloat && out.dim() == 2 && out.size(0) == num_x &&
                  out.size(1) == n,
              "fastpage small_batch_linear: out must be a contiguous float32 [", num_x, ", ", n, "]");
  const float* x_data = x.const_data_ptr<float>();
  const float* w_data = weight.const_data_ptr<float>();
  const float* b_data = bias.defined() ? bias.const_data_ptr<float>() : nullptr;
  float* y_data = out.data_ptr<float>();
  const RowsFn rows = rows_fn(num_x);
  at::parallel_for(0, n, grain_for(k * num_x), [&](int64_t begin, int64_t end) {
    rows(x_data, num_x, k, w_data, b_data, y_data, n, begin, end);
  });
}

void small_batch_linear_op(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(use_small_batch_linear(x, weight), "fastpage small_batch_linear: on the CPU x and weight must be ",
              "contiguous float32 with x [rows <= ", kSmallBatchRows, ", K], got ", x.scalar_type(), " ", x.sizes());
  small_batch_linear_out(out, x, weight, bias.has_value() ? *bias : at::Tensor());
}

void small_batch_linear_silu_and_mul_op(const at::Tensor& out, const at::Tensor& x, const at::Tensor& weight) {
  constexpr const char* op = "fastpage small_batch_linear_silu_and_mul: ";
  TORCH_CHECK(use_small_batch_linear(x, weight), op, "on the CPU x and weight must be contiguous float32 with x ",
              "[rows <= ", kSmallBatchRows, ", K], got ", x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) % 2 == 0, op, "weight must be [2 * I, K], got ", weight.sizes());
  const int64_t rows = x.size(0), d = weight.size(0) / 2;
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == at::kFloat && out.dim() == 2 && out.size(0) == rows &&
                  out.size(1) == d,
              op, "out must be a contiguous float32 [", rows, ", ", d, "], got ", out.sizes());
  at::Tensor gate_up = at::empty({rows, 2 * d}, x.options());
  small_batch_linear_out(gate_up, x, weight, at::Tensor());
  out.copy_(silu_and_mul(gate_up));
}

}  // namespace fastpage::kernels::cpu
